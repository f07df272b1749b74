"""Scripted grasp-and-lift expert with privileged cube knowledge.

It outputs actions in the policy's space ([dx, dy, dz, gripper] in [-1, 1]) and is stateless
(decides from the current state only), so it can take over from the policy at any moment: it is
the demonstrator for offline demos and the simulated human in human-in-the-loop tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Where the cube centre sits between the jaws, in the TCP frame (m): 14 mm toward the moving
# jaw and 10 mm back from the fixed-jaw tip, so the tips clear the table.
GRASP_POINT_IN_TCP_M = np.array([-0.0139, 0.0002, -0.0101])


@dataclass(frozen=True)
class ExpertConfig:
    ee_step_m: Sequence[float] = (0.02, 0.02, 0.02)
    hover_height_m: float = 0.05       # above the grasp pose before descending
    xy_tolerance_m: float = 0.006      # aligned enough to descend
    z_tolerance_m: float = 0.004       # low enough to close
    open_gripper_rad: float = 0.7
    closed_gripper_rad: float = 0.55   # below this with no cube between the jaws -> reopen
    lift_target_m: float = 0.10        # TCP height to lift to


class ScriptedExpert:
    def __init__(self, config: ExpertConfig = ExpertConfig()):
        self.cfg = config

    def act(self, tcp_pose: np.ndarray, gripper_rad: float, cube_xyz_m: Sequence[float],
            grasped: bool) -> np.ndarray:
        """tcp_pose: 4x4 TCP in base; returns the action for this step."""
        cfg = self.cfg
        tcp = tcp_pose[:3, 3]
        cube = np.asarray(cube_xyz_m, dtype=np.float64)
        # TCP position that puts the grasp point on the cube centre.
        grasp_tcp = cube - tcp_pose[:3, :3] @ GRASP_POINT_IN_TCP_M
        if grasped:
            target = np.array([tcp[0], tcp[1], max(cfg.lift_target_m, tcp[2])])
            return self._action(target - tcp, gripper=-1.0)
        xy_error = np.linalg.norm(grasp_tcp[:2] - tcp[:2])
        cube_between_jaws = xy_error < cfg.xy_tolerance_m * 1.5 and \
            abs(tcp[2] - grasp_tcp[2]) < cfg.z_tolerance_m * 2
        if cube_between_jaws:
            return self._action(grasp_tcp - tcp, gripper=-1.0)
        # Not at the cube: open the gripper (fully) while moving.
        gripper = 1.0 if gripper_rad < cfg.open_gripper_rad - 0.05 else 0.0
        if xy_error > cfg.xy_tolerance_m:
            target = grasp_tcp.copy()
            # Rise to the hover height first when low, so the jaws never sweep the cube.
            target[2] = grasp_tcp[2] + cfg.hover_height_m
            if tcp[2] < grasp_tcp[2] + cfg.hover_height_m * 0.6:
                target[:2] = tcp[:2] if xy_error > 0.02 else target[:2]
            return self._action(target - tcp, gripper=gripper)
        if gripper_rad < cfg.open_gripper_rad - 0.05:
            return self._action(np.zeros(3), gripper=1.0)
        return self._action(grasp_tcp - tcp, gripper=0.0)

    def _action(self, delta_m: np.ndarray, gripper: float) -> np.ndarray:
        xyz = np.clip(delta_m / np.asarray(self.cfg.ee_step_m), -1.0, 1.0)
        return np.append(xyz, gripper).astype(np.float32)
