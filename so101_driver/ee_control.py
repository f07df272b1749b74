"""End-effector delta actions -> safe joint goals (pure: no ROS, no device).

action = [dx, dy, dz, gripper] in [-1, 1]. dx..dz scale to metres by `ee_step_m` and move the
previous goal's TCP, but never further than one step ahead of the measured TCP (per axis), so
actions repeated while the arm lags cannot pile up; the target is clamped to the workspace box.
IK holds the approach axis: where the target cannot be reached with the tool axis held, the step
is shortened along its own direction (or dropped), never turned into motion elsewhere. Each
tick's joint change is limited by scaling the whole step. gripper: -1 closes, 0 holds, +1 opens,
values in between scale `gripper_step_rad`. The action range is the policy's tanh range by
construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from hilserl.configuration.config import ActionConfig, TaskConfig
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.configuration.parameters import param

# IK iterations per try (half of them for the approach pass): a reachable 2 cm step converges in
# about 5; the cap bounds the ticks spent on unreachable targets.
_IK_ITERATIONS = 12


# The task's values: the graph passes the training config's (config/train.yaml) to the driver.
ACTION_DEFAULTS, TASK_DEFAULTS = ActionConfig(), TaskConfig()


@dataclass(frozen=True)
class EEControlConfig:
    ee_step_m: Tuple[float, float, float] = param(
        ACTION_DEFAULTS.ee_step_m, 'metres per action unit along x, y, z')
    gripper_step_rad: float = param(ACTION_DEFAULTS.gripper_step_rad,
                                    'gripper change per action unit (rad)',
                                    float_range=(0.01, 1.0))
    workspace_min_m: Tuple[float, float, float] = param(
        TASK_DEFAULTS.workspace_min_m, 'TCP box lower corner in base_link (m)')
    workspace_max_m: Tuple[float, float, float] = param(
        TASK_DEFAULTS.workspace_max_m, 'TCP box upper corner in base_link (m)')
    approach_axis: Optional[Tuple[float, float, float]] = (0.0, 0.0, -1.0)  # held; None = free
    approach_tolerance_rad: float = 0.1    # tool axis off approach_axis (never more than before)
    max_joint_step_rad: float = 0.25       # per tick, arm joints
    max_gripper_squeeze_rad: float = 0.4   # goal at most this far inside the measured gripper
    ik_reference_tolerance_m: float = 0.02  # beyond this drift, re-anchor on the measured pose
    ik_tolerance_m: float = 5e-4           # a goal this close to its target counts as reached
    backoff_bisections: int = 3            # halvings of an unreachable step before holding

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
        if self.approach_axis is not None and (
                len(self.approach_axis) != 3 or not np.all(np.isfinite(self.approach_axis))
                or np.linalg.norm(self.approach_axis) < 1e-6):
            raise ValueError(f'approach_axis={self.approach_axis}: needs 3 finite values, '
                             'not all zero (or None)')
        for name in ('gripper_step_rad', 'max_joint_step_rad', 'max_gripper_squeeze_rad',
                     'ik_reference_tolerance_m', 'ik_tolerance_m'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name}={getattr(self, name)}: must be > 0')
        if not 0 < self.approach_tolerance_rad < math.pi / 2:
            raise ValueError(f'approach_tolerance_rad={self.approach_tolerance_rad}: must be in '
                             '(0, pi/2)')
        if not (isinstance(self.backoff_bisections, int) and 0 <= self.backoff_bisections <= 10):
            raise ValueError(f'backoff_bisections={self.backoff_bisections}: must be an int in '
                             '[0, 10]')


@dataclass(frozen=True)
class EEStep:
    joint_goal_rad: np.ndarray       # six joints
    tcp_target_m: np.ndarray         # what the goal is solved for: clamped, bounded, reduced
    clamped_to_workspace: bool
    ik_error_m: float
    joint_step_limited: bool
    command_fraction: float = 1.0    # share of the (clamped) step kept: < 1 where unreachable


def tilt_rad(kin: SO101Kinematics, q_arm, approach: np.ndarray) -> float:
    """Angle between the TCP approach axis (+z) at `q_arm` and the unit vector `approach`."""
    return math.acos(float(np.clip(kin.fk(q_arm)[:3, 2] @ approach, -1.0, 1.0)))


def reachable_step(kin: SO101Kinematics, q_start, target_m, approach: Optional[np.ndarray],
                   cfg: EEControlConfig) -> Tuple[np.ndarray, float, float]:
    """Arm joints for the largest share s of the straight TCP step from FK(q_start) to
    `target_m` that IK reaches within `ik_tolerance_m` with the tool axis within
    `approach_tolerance_rad` of `approach` (or no further off than at q_start).

    Bisection on s, 1 + `backoff_bisections` IK solves at most, each seeded at q_start (no
    random restarts: bounded time per tick). s = 0 returns q_start itself: hold. Returns
    (q_arm, s, ik_error_m).
    """
    q_start = np.asarray(q_start, dtype=np.float64)
    start = kin.fk(q_start)[:3, 3]
    step = np.asarray(target_m, dtype=np.float64) - start
    if np.linalg.norm(step) < 1e-9:
        return q_start.copy(), 1.0, 0.0
    max_tilt = cfg.approach_tolerance_rad
    if approach is not None:
        max_tilt = max(max_tilt, tilt_rad(kin, q_start, approach) + 1e-6)

    def solve(share):
        result = kin.ik_position(start + share * step, q_start, hold_approach=approach,
                                 tolerance_m=cfg.ik_tolerance_m, max_iterations=_IK_ITERATIONS,
                                 restarts=0)
        ok = result.converged and (approach is None or
                                   tilt_rad(kin, result.q, approach) <= max_tilt)
        return ok, result

    ok, result = solve(1.0)
    if ok:
        return result.q, 1.0, result.position_error_m
    best = (q_start.copy(), 0.0, 0.0)
    lo, hi = 0.0, 1.0
    for _ in range(cfg.backoff_bisections):
        share = 0.5 * (lo + hi)
        ok, result = solve(share)
        if ok:
            lo, best = share, (result.q, share, result.position_error_m)
        else:
            hi = share
    return best


class EEController:
    """Stateful wrapper: keeps the previous goal as the IK reference (smooth, and a sagging arm
    does not sink under zero actions), re-anchoring on the measured pose whenever the two
    disagree by more than a tolerance."""

    def __init__(self, kinematics: SO101Kinematics, config: EEControlConfig):
        self.kin = kinematics
        self.cfg = config
        self._reference: Optional[np.ndarray] = None
        self._lo = np.append(kinematics.lower, kinematics.gripper_limits[0])
        self._hi = np.append(kinematics.upper, kinematics.gripper_limits[1])
        self._approach = None if config.approach_axis is None else \
            np.asarray(config.approach_axis, dtype=np.float64) / \
            np.linalg.norm(config.approach_axis)

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
        step_m = np.asarray(self.cfg.ee_step_m)
        desired = reference_tcp + action[:3] * step_m
        # At most one step ahead of where the arm is: actions repeated while it lags don't add up.
        bounded = np.clip(desired, measured_tcp - step_m, measured_tcp + step_m)
        target = np.clip(bounded, self.cfg.workspace_min_m, self.cfg.workspace_max_m)
        arm, share, ik_error = reachable_step(self.kin, reference[:5], target, self._approach,
                                              self.cfg)
        # Scale the whole joint step (not each joint) so the TCP keeps its direction.
        arm_step = arm - reference[:5]
        largest = float(np.max(np.abs(arm_step)))
        limited = largest > self.cfg.max_joint_step_rad
        if limited:
            arm_step *= self.cfg.max_joint_step_rad / largest
        goal = reference.copy()
        goal[:5] = reference[:5] + arm_step
        # Gripper: delta from the reference goal, never squeezing far past the measured jaw.
        grip = reference[5] + action[3] * self.cfg.gripper_step_rad
        grip = max(grip, measured[5] - self.cfg.max_gripper_squeeze_rad)
        goal[5] = grip
        goal = np.clip(goal, self._lo, self._hi)
        self._reference = goal
        solved_for = reference_tcp + share * (target - reference_tcp)
        return EEStep(goal, solved_for, bool(np.any(bounded != target)), ik_error, limited,
                      share)


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
