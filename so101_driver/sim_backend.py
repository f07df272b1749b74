"""MuJoCo implementation of `ArmBackend`, plus rendering and ground truth for the task."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver.backend import ArmBackend, JointReading, TaskState
from so101_driver.mujoco_scene import CAMERA_NAME, SceneConfig, load_model


class SimBackend(ArmBackend):
    """The SO-101 + cube scene. Physics advances only in `step()` (the caller owns time)."""

    def __init__(self, scene: Optional[SceneConfig] = None, lift_height_m: float = 0.03):
        import mujoco
        self._mj = mujoco
        self.scene = scene or SceneConfig()
        self.model = load_model(self.scene)
        self.data = mujoco.MjData(self.model)
        self.lift_height_m = lift_height_m
        self._qpos_idx = np.array([self.model.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._qvel_idx = np.array([self.model.joint(n).dofadr[0] for n in JOINT_NAMES])
        self._act_idx = np.array([self.model.actuator(n).id for n in JOINT_NAMES])
        cube_joint = self.model.joint('cube_joint')
        self._cube_qpos = cube_joint.qposadr[0]
        self._cube_qvel = cube_joint.dofadr[0]
        self._cube_geom = self.model.geom('cube_geom').id
        self._fixed_jaw_geom = self.model.geom('gripper_link_geom1').id
        self._moving_jaw_geoms = {self.model.geom(i).id for i in range(self.model.ngeom)
                                  if self.model.geom(i).name.startswith('moving_jaw')}
        self._table_geom = self.model.geom('table').id
        self._renderer = None
        self._torque = True
        mujoco.mj_forward(self.model, self.data)

    # --- ArmBackend -------------------------------------------------------------------------
    def read(self) -> JointReading:
        d = self.data
        effort = d.actuator_force[self._act_idx].copy()
        return JointReading(d.qpos[self._qpos_idx].copy(), d.qvel[self._qvel_idx].copy(),
                            effort, float(d.time))

    def write_goal(self, position_rad) -> None:
        goal = np.asarray(position_rad, dtype=np.float64)
        if goal.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(goal)):
            raise ValueError(f'joint goal must be 6 finite values, got {goal}')
        lo, hi = self.model.actuator_ctrlrange[self._act_idx].T
        self.data.ctrl[self._act_idx] = np.clip(goal, lo, hi)

    def set_torque(self, enabled: bool) -> None:
        flag = self._mj.mjtDisableBit.mjDSBL_ACTUATION
        if enabled:
            # Like a real servo, torque comes back holding the present position.
            self.data.ctrl[self._act_idx] = self.data.qpos[self._qpos_idx]
            self.model.opt.disableflags &= ~int(flag)
        else:
            self.model.opt.disableflags |= int(flag)
        self._torque = bool(enabled)

    @property
    def torque_enabled(self) -> bool:
        return self._torque

    def task_state(self) -> TaskState:
        d = self.data
        xyz = d.qpos[self._cube_qpos:self._cube_qpos + 3].copy()
        quat = d.qpos[self._cube_qpos + 3:self._cube_qpos + 7].copy()
        touching_fixed = touching_moving = touching_table = False
        for contact in d.contact[:d.ncon]:
            pair = {contact.geom1, contact.geom2}
            if self._cube_geom not in pair:
                continue
            other = (pair - {self._cube_geom}).pop() if len(pair) == 2 else None
            touching_fixed |= other == self._fixed_jaw_geom
            touching_moving |= other in self._moving_jaw_geoms
            touching_table |= other == self._table_geom
        grasped = touching_fixed and touching_moving
        height = float(xyz[2] - self.scene.cube_size_m / 2)
        lifted = grasped and not touching_table and height >= self.lift_height_m
        return TaskState(xyz, quat, grasped, lifted, height)

    # --- simulation only --------------------------------------------------------------------
    def step(self, duration_s: float) -> None:
        """Advance physics by `duration_s` (rounded to whole timesteps)."""
        n = max(1, int(round(duration_s / self.model.opt.timestep)))
        self._mj.mj_step(self.model, self.data, nstep=n)

    def reset(self, joint_position_rad, cube_xy_m=(0.25, 0.0), cube_yaw_rad: float = 0.0):
        """Teleport the arm to a pose (holding it) and place the cube flat on the table."""
        d = self.data
        self._mj.mj_resetData(self.model, d)
        q = np.asarray(joint_position_rad, dtype=np.float64)
        d.qpos[self._qpos_idx] = q
        d.ctrl[self._act_idx] = q
        half = self.scene.cube_size_m / 2
        d.qpos[self._cube_qpos:self._cube_qpos + 3] = [cube_xy_m[0], cube_xy_m[1], half]
        d.qpos[self._cube_qpos + 3:self._cube_qpos + 7] = [math.cos(cube_yaw_rad / 2), 0, 0,
                                                           math.sin(cube_yaw_rad / 2)]
        self.set_torque(True)
        self._mj.mj_forward(self.model, d)

    def set_state(self, joint_position_rad, cube_xyz_m=None, cube_quat_wxyz=None):
        """Pose the scene kinematically (for rendering published state in another process)."""
        d = self.data
        d.qpos[self._qpos_idx] = np.asarray(joint_position_rad, dtype=np.float64)
        if cube_xyz_m is not None:
            d.qpos[self._cube_qpos:self._cube_qpos + 3] = cube_xyz_m
        if cube_quat_wxyz is not None:
            d.qpos[self._cube_qpos + 3:self._cube_qpos + 7] = cube_quat_wxyz
        self._mj.mj_kinematics(self.model, d)
        self._mj.mj_camlight(self.model, d)  # camera poses follow the bodies

    def scene_camera(self, name: str) -> str:
        """The scene camera of image.cameras' camera `name` (gripper -> gripper_cam, front ->
        front_cam); ValueError naming the scene's cameras when it has none of that name."""
        cameras = [self.model.camera(i).name for i in range(self.model.ncam)]
        if f'{name}_cam' not in cameras:
            raise ValueError(f'camera {name!r} is not in the simulated scene, which has '
                             f'{[c.removesuffix("_cam") for c in cameras]}')
        return f'{name}_cam'

    def render(self, camera: str = CAMERA_NAME) -> np.ndarray:
        """(480, 640, 3) uint8 RGB image from a scene camera."""
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self.model, self.scene.image_height_px,
                                               self.scene.image_width_px)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
