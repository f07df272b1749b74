"""End-effector delta actions -> safe joint goals (pure: no ROS, no device).

action = [dx, dy, dz, gripper] in [-1, 1]. dx..dz scale to metres by `ee_step_m`; the target is
clamped to the workspace box, solved by IK holding the approach axis, and each joint's change
per tick is limited. gripper: -1 closes, 0 holds, +1 opens, values in between scale
`gripper_step_rad`. The action range is the policy's tanh range by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from hilserl.kinematics import SO101Kinematics


@dataclass(frozen=True)
class EEControlConfig:
    ee_step_m: Tuple[float, float, float] = (0.02, 0.02, 0.02)
    gripper_step_rad: float = 0.35
    workspace_min_m: Tuple[float, float, float] = (0.10, -0.15, 0.01)
    workspace_max_m: Tuple[float, float, float] = (0.35, 0.15, 0.25)
    approach_axis: Optional[Tuple[float, float, float]] = (0.0, 0.0, -1.0)  # held; None = free
    max_joint_step_rad: float = 0.25       # per tick, arm joints
    max_gripper_squeeze_rad: float = 0.4   # goal at most this far inside the measured gripper
    ik_reference_tolerance_m: float = 0.02  # beyond this drift, re-anchor on the measured pose

    def __post_init__(self):
        for name in ('ee_step_m', 'workspace_min_m', 'workspace_max_m'):
            value = getattr(self, name)
            if len(value) != 3 or not all(np.isfinite(value)):
                raise ValueError(f'{name}={value}: needs 3 finite values')
        if any(s <= 0 or s > 0.05 for s in self.ee_step_m):
            raise ValueError(f'ee_step_m={self.ee_step_m}: each must be in (0, 0.05] m')
        if any(lo >= hi for lo, hi in zip(self.workspace_min_m, self.workspace_max_m)):
            raise ValueError(f'workspace_min_m={self.workspace_min_m} must be below '
                             f'workspace_max_m={self.workspace_max_m}')
        for name in ('gripper_step_rad', 'max_joint_step_rad', 'max_gripper_squeeze_rad',
                     'ik_reference_tolerance_m'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name}={getattr(self, name)}: must be > 0')


@dataclass(frozen=True)
class EEStep:
    joint_goal_rad: np.ndarray       # six joints
    tcp_target_m: np.ndarray         # after workspace clamping
    clamped_to_workspace: bool
    ik_error_m: float
    joint_step_limited: bool


class EEController:
    """Stateful wrapper: keeps the previous goal as the IK reference (smooth, no drift-back),
    re-anchoring on the measured pose whenever the two disagree by more than a tolerance."""

    def __init__(self, kinematics: SO101Kinematics, config: EEControlConfig):
        self.kin = kinematics
        self.cfg = config
        self._reference: Optional[np.ndarray] = None
        self._lo = np.append(kinematics.lower, kinematics.gripper_limits[0])
        self._hi = np.append(kinematics.upper, kinematics.gripper_limits[1])

    def reset(self, measured_rad=None) -> None:
        self._reference = None if measured_rad is None else \
            np.asarray(measured_rad, dtype=np.float64).copy()

    def step(self, measured_rad, action) -> EEStep:
        measured = np.asarray(measured_rad, dtype=np.float64)
        action = np.asarray(action, dtype=np.float64)
        if measured.shape != (6,) or not np.all(np.isfinite(measured)):
            raise ValueError(f'measured joints must be 6 finite values, got {measured}')
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise ValueError(f'action must be 4 finite values, got {action}')
        action = np.clip(action, -1.0, 1.0)
        reference = measured if self._reference is None else self._reference
        measured_tcp = self.kin.fk(measured[:5])[:3, 3]
        reference_tcp = self.kin.fk(reference[:5])[:3, 3]
        if np.linalg.norm(reference_tcp - measured_tcp) > self.cfg.ik_reference_tolerance_m:
            reference, reference_tcp = measured, measured_tcp
        desired = reference_tcp + action[:3] * np.asarray(self.cfg.ee_step_m)
        target = np.clip(desired, self.cfg.workspace_min_m, self.cfg.workspace_max_m)
        approach = None if self.cfg.approach_axis is None else np.asarray(self.cfg.approach_axis)
        # Small steps from the reference: no random restarts (bounded time per tick).
        result = self.kin.ik_position(target, reference[:5], hold_approach=approach,
                                      restarts=0)
        goal = reference.copy()
        goal[:5] = result.q
        # Gripper: delta from the reference goal, never squeezing far past the measured jaw.
        grip = reference[5] + action[3] * self.cfg.gripper_step_rad
        grip = max(grip, measured[5] - self.cfg.max_gripper_squeeze_rad)
        goal[5] = grip
        step = goal - reference
        limited = bool(np.any(np.abs(step[:5]) > self.cfg.max_joint_step_rad))
        step[:5] = np.clip(step[:5], -self.cfg.max_joint_step_rad, self.cfg.max_joint_step_rad)
        goal = np.clip(reference + step, self._lo, self._hi)
        self._reference = goal
        return EEStep(goal, target, bool(np.any(desired != target)), result.position_error_m,
                      limited)


# Joint configuration with the TCP top-down at (0.25, 0, 0.07) m: the IK seed for home poses.
TOP_DOWN_SEED_RAD = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0])


def home_joint_goal(kin: SO101Kinematics, tcp_xyz_m, gripper_rad: float,
                    random_xy_range_m: float = 0.0,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Six joint goals with the TCP top-down at `tcp_xyz_m` (+ uniform xy offset), gripper set."""
    target = np.array(tcp_xyz_m, dtype=np.float64)
    if random_xy_range_m > 0:
        rng = rng if rng is not None else np.random.default_rng()
        target[:2] += rng.uniform(-random_xy_range_m, random_xy_range_m, size=2)
    result = kin.ik_position(target, TOP_DOWN_SEED_RAD, hold_approach=np.array([0, 0, -1.0]))
    return np.append(result.q, gripper_rad)
