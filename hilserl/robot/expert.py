"""Scripted grasp-and-lift expert with privileged cube knowledge.

It outputs actions in the policy's space ([dx, dy, dz, gripper] in [-1, 1]) and is stateless
(decides from the current state only), so it can take over from the policy at any moment: it is
the demonstrator for offline demos and the simulated human in human-in-the-loop tests.

The wrist never turns (there is no action for it), so the jaws cannot follow the cube's yaw
(+-0.5 rad): the expert opens wide and aims the cube centre between the jaws with room for the
corners of any yaw, then closes in place; the moving jaw sweeps the cube onto the fixed one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Where the cube centre is aimed between the open jaws, in the TCP frame (m; +x toward the fixed
# jaw, +z along the approach). x: a 30 mm cube yawed by up to 45 deg against the jaws comes down
# clear of the fixed jaw for x < -0.020 and of the moving jaw (open to at least
# `open_gripper_rad` - 0.05) for x > -0.045, at the grasp height (mj_geomDistance on the scene);
# -0.033 sits in the middle. Aimed closer to the fixed jaw (the old -0.014), a jaw landed on a
# corner and pushed the cube out of reach in ~1 episode in 20. z: the cube centre 6 mm above the
# TCP, i.e. the TCP on the workspace floor (0.01 m): the fixed-jaw tip, 7 mm past the TCP, clears
# the table.
GRASP_POINT_IN_TCP_M = np.array([-0.033, 0.0002, -0.006])
# The cube counts as between the jaws (close on it) while its centre is in this x range of the
# TCP frame: the moving jaw sweeps it onto the fixed jaw when closing.
BETWEEN_JAWS_X_M = (-0.045, -0.012)


@dataclass(frozen=True)
class ExpertConfig:
    ee_step_m: Sequence[float] = (0.02, 0.02, 0.02)
    hover_height_m: float = 0.05       # above the grasp pose before descending
    xy_tolerance_m: float = 0.006      # aligned enough to descend
    z_tolerance_m: float = 0.004       # low enough to close
    gripper_step_rad: float = 0.35     # gripper change per action unit (the driver's)
    open_gripper_rad: float = 0.9      # wide enough for a yawed cube (see GRASP_POINT_IN_TCP_M)
    lift_target_m: float = 0.09        # TCP height to lift to (top-down reach ends near 0.095)
    # Share of the xy error commanded per step: the driver adds each action to its previous goal
    # while the arm still lags it, so full corrections overshoot and ring around the cube.
    xy_gain: float = 0.5


class ScriptedExpert:
    def __init__(self, config: ExpertConfig = ExpertConfig()):
        self.cfg = config

    def act(self, tcp_pose: np.ndarray, gripper_rad: float, cube_xyz_m: Sequence[float],
            grasped: bool) -> np.ndarray:
        """tcp_pose: 4x4 TCP in base; returns the action for this step."""
        cfg = self.cfg
        rotation, tcp = tcp_pose[:3, :3], tcp_pose[:3, 3]
        cube = np.asarray(cube_xyz_m, dtype=np.float64)
        if grasped:
            target = np.array([tcp[0], tcp[1], max(cfg.lift_target_m, tcp[2])])
            return self._action(target - tcp, gripper=-1.0)
        # TCP position that puts the grasp point on the cube centre.
        grasp_tcp = cube - rotation @ GRASP_POINT_IN_TCP_M
        cube_in_tcp = rotation.T @ (cube - tcp)
        height = tcp[2] - grasp_tcp[2]   # above the grasp height
        # Fully open means approaching; less, low at the cube, means closing on it: keep closing
        # even when the cube tips a little under the moving jaw.
        opened = gripper_rad >= cfg.open_gripper_rad - 0.05
        low = height < cfg.z_tolerance_m * (1 if opened else 3)
        between_jaws = low and BETWEEN_JAWS_X_M[0] < cube_in_tcp[0] < BETWEEN_JAWS_X_M[1] and \
            abs(cube_in_tcp[1] - GRASP_POINT_IN_TCP_M[1]) < cfg.xy_tolerance_m * 1.5
        if between_jaws:
            # Close in place: the moving jaw sweeps the cube onto the fixed one; following the
            # cube sideways meanwhile would pull the fixed jaw away from it.
            return self._action(np.array([0.0, 0.0, -height]), gripper=-1.0)
        # Not at the cube: open the gripper (fully) while moving, in proportion to what is left
        # (the servo lags its goal: full steps would open it far past `open_gripper_rad`).
        gripper = float(np.clip((cfg.open_gripper_rad - gripper_rad) / cfg.gripper_step_rad,
                                0.0, 1.0))
        xy_error = np.linalg.norm(grasp_tcp[:2] - tcp[:2])
        if xy_error > cfg.xy_tolerance_m:
            target = grasp_tcp.copy()
            # Rise to the hover height first when low, so the jaws never sweep the cube.
            target[2] = grasp_tcp[2] + cfg.hover_height_m
            if tcp[2] < grasp_tcp[2] + cfg.hover_height_m * 0.6:
                target[:2] = tcp[:2] if xy_error > 0.02 else target[:2]
            return self._action(target - tcp, gripper=gripper, xy_gain=cfg.xy_gain)
        if not opened:
            return self._action(np.zeros(3), gripper=gripper)
        return self._action(grasp_tcp - tcp, gripper=0.0, xy_gain=cfg.xy_gain)

    def _action(self, delta_m: np.ndarray, gripper: float, xy_gain: float = 1.0) -> np.ndarray:
        xyz = np.clip(delta_m * [xy_gain, xy_gain, 1.0] / np.asarray(self.cfg.ee_step_m),
                      -1.0, 1.0)
        return np.append(xyz, gripper).astype(np.float32)
