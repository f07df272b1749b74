"""Record simulated episodes as episode bags (offline, no ROS graph): demonstrations for the
offline buffer and labelled frames for the reward classifier.

Behaviours: 'expert' (scripted expert; presses "success" when the cube is lifted and keeps
lifting a few steps), 'noisy' (expert with action noise and occasional gripper slips: many
near-misses and failures), 'random' (random actions). Timestamps are simulated time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from hilserl.bags import EpisodeWriter, MessageFactory
from hilserl.config import TrainConfig
from hilserl.conventions import JOINT_NAMES, ActionSource, Frames, Topics
from hilserl.expert import ScriptedExpert
from hilserl.kinematics import matrix_to_quaternion_xyzw
from hilserl_policy.replay import Transition
from hilserl_policy.transport import encode_transition
from so101_driver.sim_env import SimEnv

BEHAVIOURS = ('expert', 'noisy', 'random')


@dataclass(frozen=True)
class RecordConfig:
    steps_after_success: int = 6       # keep recording (lifting) after the success key
    noise_std: float = 0.5             # 'noisy': Gaussian action noise
    slip_probability: float = 0.04     # 'noisy': chance per step of opening the gripper
    start_time_ns: int = 1_700_000_000_000_000_000


def parse_mix(text: str) -> Dict[str, float]:
    """'expert:0.6,noisy:0.3,random:0.1' -> normalised weights."""
    weights = {}
    for item in text.split(','):
        name, _, weight = item.partition(':')
        name = name.strip()
        if name not in BEHAVIOURS:
            raise ValueError(f'unknown behaviour {name!r}; choose from {BEHAVIOURS}')
        weights[name] = float(weight or 1.0)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f'mix {text!r} has no positive weight')
    return {k: v / total for k, v in weights.items()}


def record_episode(env: SimEnv, writer: EpisodeWriter, behaviour: str, rng: np.random.Generator,
                   cfg: RecordConfig, episode_index: int) -> dict:
    factory = MessageFactory(writer.store)
    expert = ScriptedExpert()
    dt_ns = int(1e9 / env.cfg.task.control_rate_hz)
    t_ns = cfg.start_time_ns + episode_index * 1000 * dt_ns
    obs, info = env.reset()
    writer.write(Topics.EPISODE_EVENTS, factory.string(
        f'{{"event": "start", "episode": {episode_index}, "behaviour": "{behaviour}"}}'), t_ns)
    episode_return, steps, success_step, extra = 0.0, 0, None, 0
    slipping = 0
    max_steps = env.cfg.task.max_episode_steps
    while steps < max_steps + cfg.steps_after_success:
        task = env.backend.task_state()
        _write_observation(writer, factory, env, obs, task, t_ns)
        action = expert.act(obs.tcp_pose, obs.joint_position_rad[5], task.cube_xyz_m,
                            task.grasped)
        if behaviour == 'noisy':
            action = action + rng.normal(0, cfg.noise_std, size=4)
            if slipping or rng.random() < cfg.slip_probability:
                slipping = slipping - 1 if slipping else 3
                action[3] = 1.0
        elif behaviour == 'random':
            action = rng.uniform(-1, 1, size=4)
        action = np.clip(action, -1, 1).astype(np.float32)
        writer.write(Topics.EE_ACTION, factory.action(action, ActionSource.HUMAN), t_ns)
        writer.write(Topics.INTERVENTION, factory.boolean(True), t_ns)
        prev = obs
        obs, reward, terminated, truncated, info = env.step(action)
        t_ns += dt_ns
        steps += 1
        writer.write(Topics.REWARD, factory.float32(reward), t_ns)
        if success_step is None:  # the transitions end where the task does
            transition = Transition(_chw(prev.image), prev.state, action, reward,
                                    _chw(obs.image), obs.state, terminated, truncated, True)
            writer.write(Topics.TRANSITIONS, factory.bytes_array(
                encode_transition(transition, episode_index, steps)), t_ns)
        if success_step is None:
            episode_return += reward
        if terminated and success_step is None:
            success_step = steps  # the simulated human presses "success" now
            writer.write(Topics.EPISODE_LABEL, factory.string('success'), t_ns)
        if success_step is not None:
            extra += 1
            if extra > cfg.steps_after_success:
                break
        elif truncated:
            break
    success = success_step is not None
    _write_observation(writer, factory, env, obs, env.backend.task_state(), t_ns)
    if not success:
        writer.write(Topics.EPISODE_LABEL, factory.string('failure'), t_ns)
    writer.write(Topics.EPISODE_EVENTS, factory.string(
        f'{{"event": "end", "episode": {episode_index}, "success": {str(success).lower()}}}'),
        t_ns)
    return {'episode': episode_index, 'behaviour': behaviour, 'success': success,
            'success_step': success_step, 'length': success_step or steps,
            'return': round(episode_return, 4), 'interventions': steps,
            'config_digest': env.cfg.digest(), 'source': 'sim'}


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _write_observation(writer, factory, env, obs, task, t_ns):
    writer.write(Topics.IMAGE_CROP, factory.image(obs.image, t_ns, Frames.CAMERA_OPTICAL), t_ns)
    reading = env.backend.read()
    writer.write(Topics.JOINT_STATES, factory.joint_state(
        JOINT_NAMES, reading.position, reading.velocity, reading.effort, t_ns), t_ns)
    pose = obs.tcp_pose
    writer.write(Topics.TCP_POSE, factory.pose(pose[:3, 3], matrix_to_quaternion_xyzw(pose[:3, :3]),
                                               t_ns, Frames.BASE), t_ns)
    w, x, y, z = task.cube_quat_wxyz
    writer.write(Topics.SIM_CUBE_POSE, factory.pose(task.cube_xyz_m, (x, y, z, w), t_ns,
                                                    Frames.BASE), t_ns)
    writer.write(Topics.SIM_SUCCESS, factory.boolean(task.lifted), t_ns)


def record_episodes(output_dir, episodes: int, mix: str = 'expert:0.6,noisy:0.3,random:0.1',
                    seed: int = 0, cfg: Optional[TrainConfig] = None,
                    record_cfg: RecordConfig = RecordConfig(),
                    progress: Optional[Callable[[dict], None]] = None) -> list:
    """Record `episodes` episodes under output_dir/episodes/episode_NNNNNN; returns metadata."""
    cfg = cfg or TrainConfig()
    weights = parse_mix(mix)
    rng = np.random.default_rng(seed)
    env = SimEnv(cfg, render=True, seed=seed)
    root = Path(output_dir) / 'episodes'
    results = []
    try:
        for index in range(episodes):
            behaviour = rng.choice(list(weights), p=list(weights.values()))
            writer = EpisodeWriter(root / f'episode_{index:06d}')
            started = time.perf_counter()
            try:
                meta = record_episode(env, writer, str(behaviour), rng, record_cfg, index)
            finally:
                writer.close()
            meta['wall_time_s'] = round(time.perf_counter() - started, 3)
            writer.close(meta)
            results.append(meta)
            if progress:
                progress(meta)
    finally:
        env.close()
    return results
