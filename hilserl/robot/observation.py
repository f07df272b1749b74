"""Proprioceptive state vector from joint readings (the seed's 18-value layout by default)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from hilserl.configuration.config import STATE_FEATURE_DIMS, TrainConfig
from hilserl.robot.kinematics import SO101Kinematics


def build_state(features: Sequence[str], position_rad, velocity_rad_s,
                kinematics: SO101Kinematics) -> np.ndarray:
    """Concatenate the configured features; float32, finite or ValueError."""
    position = np.asarray(position_rad, dtype=np.float64)
    velocity = np.asarray(velocity_rad_s, dtype=np.float64)
    parts = []
    xyz = euler = None
    for feature in features:
        if feature == 'joint_pos':
            parts.append(position)
        elif feature == 'joint_vel':
            parts.append(velocity)
        elif feature == 'gripper_pos':
            parts.append(position[5:6])
        elif feature in ('ee_xyz', 'ee_euler'):
            if xyz is None:
                xyz, euler = kinematics.tcp_xyz_euler(position[:5])
            parts.append(xyz if feature == 'ee_xyz' else euler)
        else:
            raise ValueError(f'unknown state feature {feature!r}; '
                             f'known {sorted(STATE_FEATURE_DIMS)}')
    state = np.concatenate(parts).astype(np.float32)
    if not np.all(np.isfinite(state)):
        raise ValueError(f'non-finite state {state}')
    return state


def state_bounds(cfg: TrainConfig, kinematics: Optional[SO101Kinematics] = None
                 ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(min, max) per state value for observation.state_normalisation min_max (None: none):
    observation.state_min/state_max when given, else derived as the seed's hand-set MIN_MAX
    bounds would be: joint positions within the URDF limits, joint velocities within
    +-state_velocity_bound_rad_s, the TCP within the task's workspace box (the driver clamps
    its targets there), Euler roll and yaw in [-pi, pi] and pitch in [-pi/2, pi/2]."""
    obs = cfg.observation
    if obs.state_normalisation == 'none':
        return None
    if obs.state_min is not None:
        return (np.asarray(obs.state_min, np.float32), np.asarray(obs.state_max, np.float32))
    kin = kinematics or SO101Kinematics()
    joint_lo = np.append(kin.lower, kin.gripper_limits[0])
    joint_hi = np.append(kin.upper, kin.gripper_limits[1])
    speed = obs.state_velocity_bound_rad_s
    half_pi = math.pi / 2
    ranges = {'joint_pos': (joint_lo, joint_hi),
              'joint_vel': (np.full(6, -speed), np.full(6, speed)),
              'gripper_pos': (joint_lo[5:], joint_hi[5:]),
              'ee_xyz': (cfg.task.workspace_min_m, cfg.task.workspace_max_m),
              'ee_euler': ((-math.pi, -half_pi, -math.pi), (math.pi, half_pi, math.pi))}
    low = np.concatenate([np.asarray(ranges[f][0], np.float64) for f in obs.state_features])
    high = np.concatenate([np.asarray(ranges[f][1], np.float64) for f in obs.state_features])
    return low.astype(np.float32), high.astype(np.float32)
