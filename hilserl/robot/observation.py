"""Proprioceptive state vector from joint readings (the seed's 18-value layout by default)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hilserl.configuration.config import STATE_FEATURE_DIMS
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
