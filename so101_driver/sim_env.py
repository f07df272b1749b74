"""A gym-style episode loop on the simulated SO-101 for tests, benchmarks and demos.

It composes the same pieces the ROS graph uses (EE controller, crop/resize, state builder,
task reward), with simulated time instead of wall time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hilserl.config import TrainConfig
from hilserl.image_ops import crop_resize
from hilserl.kinematics import SO101Kinematics
from hilserl.observation import build_state
from hilserl.task import RewardTracker
from so101_driver.ee_control import (TOP_DOWN_SEED_RAD, EEControlConfig, EEController,
                                     home_joint_goal)
from so101_driver.mujoco_scene import SceneConfig
from so101_driver.sim_backend import SimBackend

__all__ = ['SimEnv', 'Observation', 'reset_joint_goal', 'TOP_DOWN_SEED_RAD']


@dataclass
class Observation:
    image: Optional[np.ndarray]   # (h, w, 3) uint8 policy view, None when rendering is off
    state: np.ndarray             # (state_dim,) float32
    joint_position_rad: np.ndarray
    tcp_pose: np.ndarray          # 4x4 in base_link


def ee_control_config(cfg: TrainConfig) -> EEControlConfig:
    return EEControlConfig(ee_step_m=cfg.action.ee_step_m,
                           gripper_step_rad=cfg.action.gripper_step_rad,
                           workspace_min_m=cfg.task.workspace_min_m,
                           workspace_max_m=cfg.task.workspace_max_m)


def reset_joint_goal(kin: SO101Kinematics, cfg: TrainConfig, rng: np.random.Generator):
    """Home pose for an episode: reset TCP (+ random xy offset), top-down, gripper open."""
    offset = cfg.task.random_ee_range_xy_m if cfg.task.random_ee_reset else 0.0
    return home_joint_goal(kin, cfg.task.reset_tcp_xyz_m, cfg.task.reset_gripper_rad, offset, rng)


class SimEnv:
    def __init__(self, cfg: TrainConfig, scene: Optional[SceneConfig] = None,
                 render: bool = True, seed: int = 0, cube_spawn_range_xy_m: float = 0.04):
        self.cfg = cfg
        self.kin = SO101Kinematics()
        self.backend = SimBackend(scene, lift_height_m=cfg.task.lift_height_m)
        self.controller = EEController(self.kin, ee_control_config(cfg))
        self.render_images = render
        self.rng = np.random.default_rng(seed)
        self.cube_spawn_range_xy_m = cube_spawn_range_xy_m
        self.rewards = RewardTracker(cfg.task)
        self.dt_s = 1.0 / cfg.task.control_rate_hz
        self.last_frame: Optional[np.ndarray] = None

    def reset(self):
        q_home = reset_joint_goal(self.kin, self.cfg, self.rng)
        center = np.array(self.cfg.task.reset_tcp_xyz_m[:2])
        cube_xy = center + self.rng.uniform(-self.cube_spawn_range_xy_m,
                                            self.cube_spawn_range_xy_m, size=2)
        self.backend.reset(q_home, cube_xy, cube_yaw_rad=self.rng.uniform(-0.5, 0.5))
        self.backend.step(0.2)  # let the cube settle
        self.controller.reset(self.backend.read().position)
        self.rewards.reset()
        return self._observe(), {'task': self.backend.task_state()}

    def step(self, action):
        reading = self.backend.read()
        command = self.controller.step(reading.position, action)
        self.backend.write_goal(command.joint_goal_rad)
        self.backend.step(self.dt_s)
        task = self.backend.task_state()
        reward, terminated, truncated = self.rewards.step(task.lifted)
        info = {'task': task, 'success': task.lifted, 'command': command}
        return self._observe(), reward, terminated, truncated, info

    def _observe(self) -> Observation:
        reading = self.backend.read()
        image = None
        if self.render_images:
            self.last_frame = self.backend.render()
            image = crop_resize(self.last_frame, self.cfg.image.crop_tlhw_px,
                                self.cfg.image.resize_hw_px)
        state = build_state(self.cfg.observation.state_features, reading.position,
                            reading.velocity, self.kin)
        return Observation(image, state, reading.position, self.kin.fk(reading.position[:5]))

    def close(self):
        self.backend.close()
