"""The actor's episode logic without ROS: observation assembly with a staleness limit and frame
stacking, who acts (policy or human), reward/termination, transitions and episode events.

`sac_actor_node` feeds it messages and publishes what `EpisodeRunner.step()` returns.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from hilserl.configuration.config import DEFAULT_CAMERA, TrainConfig
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.observation import build_state
from hilserl.learning.task import RewardTracker
from hilserl.data.transition import Transition


class StaleObservation(Exception):
    """The newest image or joint state is too old (or missing) to act on."""


class ObservationAssembler:
    """Latest policy view of each camera + joint state -> (stacked CHW uint8 image, state), or
    StaleObservation. The image stacks the cameras camera-major (image.cameras order), each
    camera's frames oldest first: (3 x n_obs_steps x cameras, H, W)."""

    def __init__(self, cfg: TrainConfig, kinematics: Optional[SO101Kinematics] = None):
        self.cfg = cfg
        self.kin = kinematics or SO101Kinematics()
        self.cameras = cfg.image.camera_names
        self.images: Dict[str, np.ndarray] = {}
        self.image_stamps_s: Dict[str, float] = {}
        self.joints: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.joints_stamp_s = -np.inf
        # per tick: (cameras, 3, H, W)
        self.frames: Deque[np.ndarray] = deque(maxlen=cfg.observation.n_obs_steps)

    def set_image(self, image_hwc: np.ndarray, stamp_s: float,
                  camera: str = DEFAULT_CAMERA) -> None:
        if camera not in self.cameras:
            raise ValueError(f'camera {camera!r} is not one of image.cameras {list(self.cameras)}')
        expected = (*self.cfg.image.resize_hw_px, 3)
        if image_hwc.shape != expected or image_hwc.dtype != np.uint8:
            raise ValueError(f'policy image is {image_hwc.shape} {image_hwc.dtype}, expected '
                             f'{expected} uint8 (check the camera crop/resize parameters)')
        self.images[camera] = image_hwc
        self.image_stamps_s[camera] = stamp_s

    def set_joints(self, position_rad, velocity_rad_s, stamp_s: float) -> None:
        self.joints = (np.asarray(position_rad, np.float64), np.asarray(velocity_rad_s,
                                                                        np.float64))
        self.joints_stamp_s = stamp_s

    def reset(self) -> None:
        self.frames.clear()

    def _image_name(self, camera: str) -> str:
        return 'image' if len(self.cameras) == 1 else f'{camera} image'

    def observe(self, now_s: float) -> Tuple[np.ndarray, np.ndarray]:
        limit = self.cfg.observation.max_staleness_s
        missing = [c for c in self.cameras if c not in self.images]
        if missing or self.joints is None:
            waiting = missing or list(self.cameras)
            what = 'image' if len(self.cameras) == 1 else \
                f'image of camera{"s" if len(waiting) > 1 else ""} {", ".join(waiting)}'
            raise StaleObservation(f'waiting for the first {what} and joint state')
        stamps = [(self._image_name(c), self.image_stamps_s[c]) for c in self.cameras]
        for name, stamp in stamps + [('joint_states', self.joints_stamp_s)]:
            age = now_s - stamp
            if age > limit:
                raise StaleObservation(f'{name} is {age:.2f} s old (limit {limit} s)')
        state = build_state(self.cfg.observation.state_features, self.joints[0], self.joints[1],
                            self.kin)
        frame = np.stack([self.images[c].transpose(2, 0, 1) for c in self.cameras])
        self.frames.append(frame)
        while len(self.frames) < self.frames.maxlen:  # episode start: repeat the first frame
            self.frames.appendleft(frame)
        # (frames, cameras, 3, H, W) -> camera-major channels
        stacked = np.stack(list(self.frames), axis=1)
        return np.ascontiguousarray(stacked.reshape(-1, *stacked.shape[3:])), state


@dataclass
class EpisodeStats:
    episode: int
    steps: int = 0
    episode_return: float = 0.0
    interventions: int = 0
    success: bool = False
    outcome: str = 'running'          # running | success | failure | timeout | rerecord
    # Counted while their mechanism is on (None: off, and not in the events, which stay as
    # they were): state-changing gripper commands (task.gripper_penalty > 0) and detector
    # successes not counted because the gripper was open (classifier_requires_gripper_closed).
    gripper_changes: Optional[int] = None
    open_gripper_successes: Optional[int] = None

    def event(self, name: str, **extra) -> str:
        data = {'event': name, 'episode': self.episode, 'steps': self.steps,
                'return': round(self.episode_return, 4), 'interventions': self.interventions,
                'success': self.success, 'outcome': self.outcome}
        for key in ('gripper_changes', 'open_gripper_successes'):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data.update(extra)
        return json.dumps(data)


@dataclass
class StepResult:
    policy_action: Optional[np.ndarray] = None
    executed_action: Optional[np.ndarray] = None
    intervention: bool = False
    transition: Optional[Transition] = None
    reward: Optional[float] = None
    ended: bool = False
    events: List[str] = field(default_factory=list)


class EpisodeRunner:
    """One control step: close the previous transition, decide the episode's fate, act."""

    def __init__(self, cfg: TrainConfig, policy: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.cfg = cfg
        self.policy = policy
        self.tracker = RewardTracker(cfg.task)
        self.gripper_action_index = cfg.action.names.index('gripper')
        self.gripper_state_index = cfg.observation.gripper_index
        self.stats: Optional[EpisodeStats] = None
        self.episode_index = -1
        self._pending: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = None

    @property
    def running(self) -> bool:
        return self.stats is not None and self.stats.outcome == 'running'

    def start(self, episode_index: Optional[int] = None) -> str:
        self.episode_index = self.episode_index + 1 if episode_index is None else episode_index
        self.tracker.reset()
        self._pending = None
        task = self.cfg.task
        self.stats = EpisodeStats(
            self.episode_index,
            gripper_changes=0 if task.gripper_penalty > 0 else None,
            open_gripper_successes=0 if task.classifier_requires_gripper_closed else None)
        return self.stats.event('start')

    def end_by_label(self, label: str) -> str:
        """End the running episode by the person's failure or re-record key where no step can be
        taken (the arm is locked out): its open step is dropped, as the arm never completed it.
        Returns the `end` event."""
        stats = self.stats
        if stats is None or stats.outcome != 'running' or label not in ('failure', 'rerecord'):
            raise RuntimeError(f'end_by_label({label!r}) needs a running episode and failure '
                               'or rerecord')
        stats.success = False
        stats.outcome = label
        self._pending = None
        return stats.event('end')

    def step(self, image: np.ndarray, state: np.ndarray, success: bool,
             human_action: Optional[np.ndarray], intervention: bool,
             label: Optional[str] = None,
             policy_action: Optional[np.ndarray] = None) -> StepResult:
        """`success`: classifier/ground-truth success now; `label`: the human's key, if any;
        `policy_action`: the policy's proposal when the caller already computed it (the actor
        publishes it for the human to judge before the step), else the policy is called."""
        result = StepResult()
        stats = self.stats
        if stats is None or stats.outcome != 'running':
            raise RuntimeError('step() outside an episode: call start() first')
        if self._pending is not None:
            prev_image, prev_state, prev_action, prev_intervention = self._pending
            gripper_rad = (None if self.gripper_state_index is None
                           else float(state[self.gripper_state_index]))
            reward, terminated, truncated = self.tracker.step(
                success, label == 'success', float(prev_action[self.gripper_action_index]),
                gripper_rad)
            if label in ('failure', 'rerecord') and not terminated:
                truncated = True
            stats.steps += 1
            stats.episode_return += reward
            stats.interventions += int(prev_intervention)
            if stats.gripper_changes is not None:
                stats.gripper_changes = self.tracker.gripper_changes
            if stats.open_gripper_successes is not None:
                stats.open_gripper_successes = self.tracker.open_gripper_successes
            result.reward = reward
            result.transition = Transition(prev_image, prev_state, prev_action, reward, image,
                                           state, terminated, truncated, prev_intervention)
            if terminated or truncated:
                stats.success = terminated
                stats.outcome = ('success' if terminated else label if label else 'timeout')
                result.ended = True
                result.events.append(stats.event('end'))
                self._pending = None
                return result
        if policy_action is None:
            policy_action = self.policy(image, state)
        policy_action = np.clip(np.asarray(policy_action, np.float32), -1, 1)
        executed = policy_action
        if intervention and human_action is not None:
            executed = np.clip(np.asarray(human_action, np.float32), -1, 1)
        result.policy_action = policy_action
        result.executed_action = executed
        result.intervention = bool(intervention and human_action is not None)
        self._pending = (image, state, executed, result.intervention)
        return result
