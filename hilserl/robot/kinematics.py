"""SO-101 kinematics loaded from the URDF: forward kinematics, Jacobian, position IK.

numpy only (see docs/kinematics.md for the comparison with pinocchio/placo/ikpy): the chain is
six joints, FK is a handful of 4x4 products, and the IK below converges in a few iterations.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.common.paths import share_path


def default_urdf_path() -> Path:
    """The SO-101 URDF: the source tree copy, else the installed share/hilserl copy."""
    return share_path('urdf', 'so101.urdf')


def rpy_to_matrix(rpy: Sequence[float]) -> np.ndarray:
    """URDF fixed-axis roll, pitch, yaw -> rotation matrix (Rz(yaw) Ry(pitch) Rx(roll))."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), \
        math.cos(y), math.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def matrix_to_euler_zyx(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (roll, pitch, yaw) with rot = Rz(yaw) Ry(pitch) Rx(roll)."""
    pitch = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    if abs(rot[2, 0]) < 1.0 - 1e-9:
        roll = math.atan2(rot[2, 1], rot[2, 2])
        yaw = math.atan2(rot[1, 0], rot[0, 0])
    else:  # gimbal lock: put everything in yaw
        roll = 0.0
        yaw = math.atan2(-rot[0, 1], rot[1, 1])
    return np.array([roll, pitch, yaw])


def matrix_to_quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (x, y, z, w), w >= 0."""
    m = rot
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def transform(xyz, rpy) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rpy_to_matrix(rpy)
    out[:3, 3] = xyz
    return out


def _floats(text: Optional[str], default: str) -> List[float]:
    return [float(v) for v in (text or default).split()]


@dataclass(frozen=True)
class UrdfJoint:
    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray          # 4x4 parent -> joint frame at q = 0
    axis: np.ndarray            # unit axis in the joint frame
    lower: float
    upper: float


def parse_urdf_joints(urdf_path=None) -> Dict[str, UrdfJoint]:
    """All joints of a URDF by name (revolute limits in rad; fixed joints have 0 limits)."""
    path = Path(urdf_path) if urdf_path is not None else default_urdf_path()
    root = ET.parse(path).getroot()
    joints = {}
    for element in root.findall('joint'):
        origin = element.find('origin')
        xyz = _floats(origin.get('xyz') if origin is not None else None, '0 0 0')
        rpy = _floats(origin.get('rpy') if origin is not None else None, '0 0 0')
        axis_el = element.find('axis')
        axis = np.array(_floats(axis_el.get('xyz') if axis_el is not None else None, '1 0 0'))
        limit = element.find('limit')
        lower = float(limit.get('lower', 0.0)) if limit is not None else 0.0
        upper = float(limit.get('upper', 0.0)) if limit is not None else 0.0
        norm = np.linalg.norm(axis)
        joints[element.get('name')] = UrdfJoint(
            name=element.get('name'), type=element.get('type'),
            parent=element.find('parent').get('link'), child=element.find('child').get('link'),
            origin=transform(xyz, rpy), axis=axis / norm if norm > 0 else axis,
            lower=lower, upper=upper)
    return joints


_EYE3 = np.eye(3)


def _skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrix: _skew(v) @ w == cross(v, w)."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


class KinematicChain:
    """Serial chain from `base` to `tip` of a URDF, actuated by its revolute joints."""

    def __init__(self, urdf_path=None, base: str = 'base_link', tip: str = 'gripper_frame_link'):
        joints = parse_urdf_joints(urdf_path)
        by_child = {j.child: j for j in joints.values()}
        chain = []
        link = tip
        while link != base:
            if link not in by_child:
                raise ValueError(f'no kinematic path from {base!r} to {tip!r} (stuck at {link!r})')
            joint = by_child[link]
            chain.append(joint)
            link = joint.parent
        self.base, self.tip = base, tip
        self.joints: Tuple[UrdfJoint, ...] = tuple(reversed(chain))
        self.active = tuple(j for j in self.joints if j.type in ('revolute', 'continuous'))
        self.joint_names = tuple(j.name for j in self.active)
        self.lower = np.array([j.lower for j in self.active])
        self.upper = np.array([j.upper for j in self.active])
        # Rodrigues terms per active joint: R(q) = I + sin(q) K + (1 - cos(q)) K^2.
        self._skew = {j.name: _skew(j.axis) for j in self.active}
        self._skew2 = {name: k @ k for name, k in self._skew.items()}

    @property
    def dof(self) -> int:
        return len(self.active)

    def frames(self, q: Sequence[float]) -> List[np.ndarray]:
        """Joint frames (after each joint's motion) in the base frame, then the tip last."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.dof,):
            raise ValueError(f'expected {self.dof} joint values {self.joint_names}, got {q.shape}')
        pose = np.eye(4)
        out = []
        i = 0
        for joint in self.joints:
            pose = pose @ joint.origin
            if joint.type in ('revolute', 'continuous'):
                rot = _EYE3 + math.sin(q[i]) * self._skew[joint.name] \
                    + (1.0 - math.cos(q[i])) * self._skew2[joint.name]
                pose[:3, :3] = pose[:3, :3] @ rot
                i += 1
                out.append(pose.copy())
        out.append(pose)
        return out

    def fk(self, q: Sequence[float]) -> np.ndarray:
        """4x4 pose of the tip in the base frame."""
        return self.frames(q)[-1]

    def jacobian(self, q: Sequence[float]) -> np.ndarray:
        """6 x dof geometric Jacobian of the tip (linear rows first), base frame."""
        return self.fk_and_jacobian(q)[1]

    def fk_and_jacobian(self, q: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """Tip pose and Jacobian from one pass over the chain (the IK inner loop needs both)."""
        frames = self.frames(q)
        tip = frames[-1]
        axes = np.array([f[:3, :3] @ j.axis for j, f in zip(self.active, frames[:-1])]).T
        lever = tip[:3, 3, None] - np.array([f[:3, 3] for f in frames[:-1]]).T
        (ax, ay, az), (lx, ly, lz) = axes, lever
        jac = np.empty((6, self.dof))
        # Column-wise cross(axis, lever) written out: np.cross costs more than the whole FK.
        jac[0], jac[1], jac[2] = ay * lz - az * ly, az * lx - ax * lz, ax * ly - ay * lx
        jac[3:] = axes
        return tip, jac


@dataclass
class IkResult:
    q: np.ndarray
    position_error_m: float
    iterations: int
    converged: bool


class SO101Kinematics:
    """TCP kinematics of the SO-101 arm (five arm joints; the gripper does not move the TCP)."""

    ARM_JOINTS = ('shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll')

    def __init__(self, urdf_path=None, tip: str = 'gripper_frame_link'):
        self.chain = KinematicChain(urdf_path, tip=tip)
        if self.chain.joint_names != self.ARM_JOINTS:
            raise ValueError(f'unexpected SO-101 chain {self.chain.joint_names}')
        joints = parse_urdf_joints(urdf_path)
        gripper = joints['gripper']
        self.gripper_limits = (gripper.lower, gripper.upper)
        self.lower, self.upper = self.chain.lower, self.chain.upper

    def fk(self, q_arm) -> np.ndarray:
        return self.chain.fk(q_arm)

    def tcp_xyz_euler(self, q_arm) -> Tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and ZYX Euler angles (rad): the seed's ee_xyz + ee_euler state."""
        pose = self.chain.fk(q_arm)
        return pose[:3, 3].copy(), matrix_to_euler_zyx(pose[:3, :3])

    def jacobian(self, q_arm) -> np.ndarray:
        return self.chain.jacobian(q_arm)

    def ik_position(self, target_xyz, q_start, *, hold_approach: Optional[np.ndarray] = None,
                    approach_weight_m: float = 0.05, active: Sequence[int] = (0, 1, 2, 3),
                    tolerance_m: float = 2e-4, max_iterations: int = 60,
                    restarts: int = 40, seed: int = 0) -> IkResult:
        """Damped least squares position IK within joint limits.

        With `hold_approach` (unit vector in base), a first pass also steers the TCP approach
        axis (+z) toward it, weighted `approach_weight_m` metres per radian; a position-only pass
        then removes any position error that trade-off left. Only joints in `active` move (wrist
        roll stays by default). If the solve from `q_start` stalls (a joint limit or a local
        minimum), it restarts from seeded random configurations and keeps the best.
        """
        target = np.asarray(target_xyz, dtype=np.float64)
        q0 = np.clip(np.asarray(q_start, dtype=np.float64), self.lower, self.upper)
        cols = np.asarray(active)
        q = q0
        if hold_approach is not None:
            goal = np.asarray(hold_approach, dtype=np.float64)
            q = self._dls(q0, cols, target, goal / np.linalg.norm(goal), approach_weight_m,
                          max_iterations // 2, tolerance_m)
        best = self._solve_position(q, cols, target, max_iterations, tolerance_m)
        rng = np.random.default_rng(seed)
        for _ in range(restarts if not best.converged else 0):
            start = q0.copy()
            start[cols] = rng.uniform(self.lower[cols], self.upper[cols])
            result = self._solve_position(start, cols, target, max_iterations, tolerance_m)
            if result.position_error_m < best.position_error_m:
                best = result
            if best.converged:
                break
        return best

    def _solve_position(self, q, cols, target, max_iterations, tolerance_m) -> IkResult:
        q = self._dls(q, cols, target, None, 0.0, max_iterations, tolerance_m)
        error = float(np.linalg.norm(target - self.chain.fk(q)[:3, 3]))
        return IkResult(q, error, max_iterations, error < tolerance_m)

    def _dls(self, q, cols, target, approach, weight, iterations, tolerance_m,
             damping=0.01, max_step_rad=0.3) -> np.ndarray:
        q = q.copy()
        for _ in range(iterations):
            pose, jac = self.chain.fk_and_jacobian(q)
            error = target - pose[:3, 3]
            jac = jac[:, cols]
            if approach is None:
                if np.linalg.norm(error) < tolerance_m:
                    break
                task, rows = error, jac[:3]
            else:
                # d(approach)/dq = omega x approach; error term pulls approach toward goal.
                z = pose[:3, 2]
                skew = _skew(z)
                task = np.concatenate([error, weight * (approach - z)])
                rows = np.vstack([jac[:3], -weight * skew @ jac[3:]])
            lam2 = damping ** 2
            dq = rows.T @ np.linalg.solve(rows @ rows.T + lam2 * np.eye(len(task)), task)
            # Joints pinned at a limit and pushed further take no part: the others then do the
            # whole job instead of a clipped share of it (fast convergence along limits).
            pinned = ((q[cols] <= self.lower[cols]) & (dq < 0)) | \
                ((q[cols] >= self.upper[cols]) & (dq > 0))
            if pinned.any() and not pinned.all():
                rows = rows * ~pinned
                dq = rows.T @ np.linalg.solve(rows @ rows.T + lam2 * np.eye(len(task)), task)
            step = np.max(np.abs(dq))
            if step < 1e-6:  # converged to the weighted compromise
                break
            if step > max_step_rad:
                dq *= max_step_rad / step
            moved = np.clip(q[cols] + dq, self.lower[cols], self.upper[cols])
            if np.max(np.abs(moved - q[cols])) < 1e-6:  # pinned at joint limits: stalled
                break
            q[cols] = moved
        return q
