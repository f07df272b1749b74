"""Typed, frozen configuration per concern, loaded from YAML and validated on construction.

Every error names the field (dotted path) and the bad value. The full `TrainConfig` is saved
beside every checkpoint and episode so a run can always be explained afterwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import yaml

from hilserl.messages.conventions import ACTION_NAMES
from hilserl.common.files import write_text_atomic
from hilserl.configuration.parameters import param
from hilserl.configuration.pretrained import DEFAULT_REPO, frozen_without_weights_message

# Output range of each policy squashing function: the action bounds must equal it.
SQUASH_RANGES = {'tanh': (-1.0, 1.0)}


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and the value."""


def _require(condition: bool, field_path: str, value, why: str):
    if not condition:
        raise ConfigError(f'{field_path}={value!r}: {why}')


def _finite(name, value):
    _require(isinstance(value, (int, float)) and math.isfinite(value), name, value,
             'must be a finite number')


def _positive(name, value):
    _finite(name, value)
    _require(value > 0, name, value, 'must be > 0')


def _unit_interval(name, value, closed_low=True):
    _finite(name, value)
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    _require(ok, name, value, 'must be in [0, 1]' if closed_low else 'must be in (0, 1]')


@dataclass(frozen=True)
class ActionConfig:
    """End-effector delta action [dx, dy, dz, gripper], each in [low, high]."""
    names: Tuple[str, ...] = ACTION_NAMES
    low: Tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)
    high: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    ee_step_m: Tuple[float, float, float] = (0.02, 0.02, 0.02)  # metres per step at action 1
    gripper_mode: str = 'continuous'       # continuous | discrete (close/stay/open critic)
    gripper_step_rad: float = 0.35         # gripper joint change per step at action +-1

    def __post_init__(self):
        n = len(self.names)
        _require(n >= 1, 'action.names', self.names, 'needs at least one dimension')
        _require(len(self.low) == n, 'action.low', self.low, f'needs {n} values (one per name)')
        _require(len(self.high) == n, 'action.high', self.high, f'needs {n} values (one per name)')
        for i, (lo, hi) in enumerate(zip(self.low, self.high)):
            _finite(f'action.low[{i}]', lo)
            _finite(f'action.high[{i}]', hi)
            _require(lo < hi, f'action.low[{i}]', lo, f'must be < action.high[{i}]={hi}')
        _require(len(self.ee_step_m) == 3, 'action.ee_step_m', self.ee_step_m, 'needs 3 values')
        for i, step in enumerate(self.ee_step_m):
            _positive(f'action.ee_step_m[{i}]', step)
            _require(step <= 0.05, f'action.ee_step_m[{i}]', step,
                     'more than 5 cm per step is unsafe for the SO-101')
        _require(self.gripper_mode in ('continuous', 'discrete'), 'action.gripper_mode',
                 self.gripper_mode, "must be 'continuous' or 'discrete'")
        _positive('action.gripper_step_rad', self.gripper_step_rad)

    @property
    def dim(self) -> int:
        return len(self.names)


# Camera names become node names and topic prefixes (<name>_camera, <name>_cam/image_crop)
CAMERA_NAME_PATTERN = re.compile(r'^[a-z][a-z0-9_]{0,31}$')
# The flat image fields of configurations written before image.cameras: the one camera,
# named this (its node gripper_camera, its topics gripper_cam/*, as before).
DEFAULT_CAMERA = 'gripper'
_FLAT_CAMERA_KEYS = ('width_px', 'height_px', 'crop_tlhw_px')


@dataclass(frozen=True)
class CameraView:
    """One camera: its name, frame size and the crop [top, left, height, width] of its view."""
    name: str = DEFAULT_CAMERA
    width_px: int = 640
    height_px: int = 480
    # also the camera node's parameter (param: one default, one description)
    crop_tlhw_px: Tuple[int, int, int, int] = param(
        (0, 80, 480, 480), 'policy crop [top, left, height, width] (px)')

    def __post_init__(self):
        where = f'image.cameras[{self.name}]'  # errors name the camera: image.cameras[front]
        _require(isinstance(self.name, str) and bool(CAMERA_NAME_PATTERN.match(self.name)),
                 f'{where}.name', self.name,
                 'must be lower case letters, digits and _ (a node and topic name: gripper, '
                 'front)')
        _require(self.width_px > 0 and self.height_px > 0, f'{where}.width_px/height_px',
                 (self.width_px, self.height_px), 'must be positive')
        _require(len(self.crop_tlhw_px) == 4, f'{where}.crop_tlhw_px', self.crop_tlhw_px,
                 'needs [top, left, height, width]')
        top, left, h, w = self.crop_tlhw_px
        _require(top >= 0 and left >= 0 and h > 0 and w > 0, f'{where}.crop_tlhw_px',
                 self.crop_tlhw_px, 'top/left must be >= 0 and height/width > 0')
        _require(top + h <= self.height_px and left + w <= self.width_px,
                 f'{where}.crop_tlhw_px', self.crop_tlhw_px,
                 f'crop leaves the {self.width_px}x{self.height_px} frame')


@dataclass(frozen=True)
class ImageConfig:
    """The cameras (each its frame and crop) and the policy view every crop is resized to.
    The observation image stacks the cameras' views on the channel axis, camera-major."""
    cameras: Tuple[CameraView, ...] = (CameraView(),)
    # also the camera nodes' parameter (param: one default, one description)
    resize_hw_px: Tuple[int, int] = param((128, 128), 'policy view [height, width] (px)')

    def __post_init__(self):
        _require(len(self.cameras) >= 1, 'image.cameras', self.cameras,
                 'needs at least one camera')
        names = self.camera_names
        _require(len(set(names)) == len(names), 'image.cameras', list(names),
                 'camera names must be unique')
        _require(len(self.resize_hw_px) == 2 and all(v > 0 for v in self.resize_hw_px),
                 'image.resize_hw_px', self.resize_hw_px, 'needs two positive sizes')

    @property
    def camera_names(self) -> Tuple[str, ...]:
        return tuple(camera.name for camera in self.cameras)

    def camera(self, name: str) -> CameraView:
        """The camera called `name`; ConfigError naming the configured ones otherwise."""
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise ConfigError(f'camera {name!r} is not configured; image.cameras has '
                          f'{list(self.camera_names)}')


def flat_image_section(data: dict, path: str = 'image') -> dict:
    """An image section written before image.cameras (width_px, height_px, crop_tlhw_px at its
    top, as in config/train.yaml and older checkpoints): those keys become the one camera,
    `gripper`. Both forms at once is an error naming them."""
    flat = {k: data[k] for k in _FLAT_CAMERA_KEYS if k in data}
    if not flat:
        return data
    if 'cameras' in data:
        raise ConfigError(f'{path}.{next(iter(flat))} and {path}.cameras are both given; set '
                          f'the camera\'s frame and crop inside {path}.cameras')
    rest = {k: v for k, v in data.items() if k not in flat}
    return {**rest, 'cameras': [{'name': DEFAULT_CAMERA, **flat}]}


def check_same_cameras(trained_with, cfg: 'TrainConfig', source) -> None:
    """A model (policy checkpoint, classifier) trained on the cameras `trained_with` (names, in
    order) fits only a graph with those cameras: ConfigError in one line otherwise."""
    running = cfg.image.camera_names
    if tuple(trained_with) != tuple(running):
        raise ConfigError(f'{source} was trained with cameras {list(trained_with)} but this '
                          f'graph\'s configuration has {list(running)} (image.cameras); run it '
                          'with the cameras it was trained with')


STATE_FEATURE_DIMS = {'joint_pos': 6, 'joint_vel': 6, 'ee_xyz': 3, 'ee_euler': 3,
                      'gripper_pos': 1}


STATE_NORMALISATIONS = ('none', 'min_max')


@dataclass(frozen=True)
class ObservationConfig:
    """Proprioceptive state layout (seed: joint_pos 6 + joint_vel 6 + ee_xyz 3 + ee_euler 3)."""
    state_features: Tuple[str, ...] = ('joint_pos', 'joint_vel', 'ee_xyz', 'ee_euler')
    n_obs_steps: int = 1
    max_staleness_s: float = 0.25  # an older observation pauses the policy
    # The state as the policy's state encoder sees it: none (raw rad, rad/s, m) or min_max
    # (the seed's MIN_MAX: each value mapped from [state_min, state_max] to [-1, 1] and clipped
    # there), inside the policy, so actor and learner map it alike and the replay keeps raw
    # states. none: checkpoints from before the option behave as they did.
    state_normalisation: str = 'none'
    # min_max bounds, one per state value in state_features order; null (both): derived from
    # the URDF joint limits, the task's workspace box, the Euler angles' ranges and
    # state_velocity_bound_rad_s (hilserl/robot/observation.py, state_bounds).
    state_min: Optional[Tuple[float, ...]] = None
    state_max: Optional[Tuple[float, ...]] = None
    # derived bounds of joint_vel: +- this (rad/s); a commanded step moves the gripper at most
    # 0.35 rad, an arm joint 0.25 rad (the driver's limits), at 10 Hz
    state_velocity_bound_rad_s: float = 3.5

    def __post_init__(self):
        for name in self.state_features:
            _require(name in STATE_FEATURE_DIMS, 'observation.state_features', name,
                     f'unknown feature; choose from {sorted(STATE_FEATURE_DIMS)}')
        _require(len(set(self.state_features)) == len(self.state_features),
                 'observation.state_features', self.state_features, 'has duplicates')
        _require(isinstance(self.n_obs_steps, int) and 1 <= self.n_obs_steps <= 8,
                 'observation.n_obs_steps', self.n_obs_steps, 'must be an integer in [1, 8]')
        _positive('observation.max_staleness_s', self.max_staleness_s)
        _require(self.state_normalisation in STATE_NORMALISATIONS,
                 'observation.state_normalisation', self.state_normalisation,
                 f'choose from {list(STATE_NORMALISATIONS)}')
        _positive('observation.state_velocity_bound_rad_s', self.state_velocity_bound_rad_s)
        given = [name for name in ('state_min', 'state_max') if getattr(self, name) is not None]
        if not given:
            return
        _require(self.state_normalisation == 'min_max', f'observation.{given[0]}',
                 getattr(self, given[0]), 'is used by observation.state_normalisation: min_max '
                 f'only (it is {self.state_normalisation!r}); set that or remove the bounds')
        _require(len(given) == 2, f'observation.{given[0]}', getattr(self, given[0]),
                 'needs observation.state_min and state_max both (or neither: derived)')
        for name in given:
            value = getattr(self, name)
            _require(len(value) == self.state_dim, f'observation.{name}', value,
                     f'needs {self.state_dim} values (one per value of {self.state_features})')
            for i, v in enumerate(value):
                _finite(f'observation.{name}[{i}]', v)
        for i, (lo, hi) in enumerate(zip(self.state_min, self.state_max)):
            _require(lo < hi, f'observation.state_min[{i}]', lo,
                     f'must be < observation.state_max[{i}]={hi}')

    @property
    def state_dim(self) -> int:
        return sum(STATE_FEATURE_DIMS[f] for f in self.state_features)

    @property
    def gripper_index(self) -> Optional[int]:
        """Where the gripper joint position (rad) is in the state; None without it."""
        offset = 0
        for name in self.state_features:
            if name in ('joint_pos', 'gripper_pos'):
                return offset + (5 if name == 'joint_pos' else 0)
            offset += STATE_FEATURE_DIMS[name]
        return None


@dataclass(frozen=True)
class TaskConfig:
    """Episode, reset, workspace and reward shaping of the grasp-and-lift task."""
    control_rate_hz: float = 10.0
    episode_time_s: float = 10.0
    reset_tcp_xyz_m: Tuple[float, float, float] = (0.25, 0.0, 0.07)
    random_ee_reset: bool = True
    random_ee_range_xy_m: float = 0.03
    reset_gripper_rad: float = 0.7        # gripper opening at reset
    # Wait after the arm is home before an episode starts (s): on the arm, the human's time to
    # re-place the cube (the seed's reset delay); the graph passes it to the actor.
    reset_delay_s: float = 0.5
    # A reset (lift, then home) not home within this long is asked again (s). The arm's path
    # home at the driver's reset speed fits well inside; a jammed arm does not.
    reset_timeout_s: float = 15.0
    workspace_min_m: Tuple[float, float, float] = (0.10, -0.15, 0.01)
    workspace_max_m: Tuple[float, float, float] = (0.35, 0.15, 0.25)
    lift_height_m: float = 0.03           # success: cube this far above the table while grasped
    success_reward: float = 10.0
    step_penalty: float = 0.05
    success_frames_to_end: int = 1         # consecutive success frames that end the episode
    min_steps_before_success: int = 0      # success is ignored in the first N steps
    # Reward classifier: success when its probability >= this (the graph passes it to the
    # reward_classifier node); None: the threshold saved with the classifier checkpoint.
    classifier_threshold: Optional[float] = None
    # `hilserl eval` resets: randomised like training (true) or always the home TCP (false,
    # the seed's eval configuration).
    eval_random_ee_reset: bool = True
    # Subtracted from the step reward for each state-changing gripper command (HIL-SERL's grasp
    # penalty; 0 here so that runs and checkpoints from before it keep their rewards): the
    # executed gripper action, beyond +-gripper_dead_band, commands closing (< 0) or opening
    # (> 0); it changes the state when it differs from the last such command of the episode
    # (at the start: closed if reset_gripper_rad < gripper_closed_below_rad, else open).
    gripper_penalty: float = 0.0
    gripper_dead_band: float = 0.5        # |gripper action| up to this: "stay", no command
    # The gripper counts as closed below this joint position (rad): a 3 cm cube held in the
    # simulated SO-101 stops the jaws at 0.12-0.19 rad, the reset opens them to 0.7.
    gripper_closed_below_rad: float = 0.4
    # Count the detector's success (classifier, or the simulator's) only while the gripper is
    # closed (HIL-SERL gates its reward classifier on the gripper state); the success key is
    # a person's judgement and never gated.
    classifier_requires_gripper_closed: bool = False

    def __post_init__(self):
        _positive('task.control_rate_hz', self.control_rate_hz)
        _require(self.control_rate_hz <= 100, 'task.control_rate_hz', self.control_rate_hz,
                 'must be <= 100 Hz')
        _positive('task.episode_time_s', self.episode_time_s)
        for name in ('reset_tcp_xyz_m', 'workspace_min_m', 'workspace_max_m'):
            value = getattr(self, name)
            _require(len(value) == 3, f'task.{name}', value, 'needs 3 values (x, y, z)')
            for i, v in enumerate(value):
                _finite(f'task.{name}[{i}]', v)
        for i in range(3):
            lo, hi = self.workspace_min_m[i], self.workspace_max_m[i]
            _require(lo < hi, f'task.workspace_min_m[{i}]', lo,
                     f'must be < task.workspace_max_m[{i}]={hi}')
            r = self.reset_tcp_xyz_m[i]
            _require(lo <= r <= hi, f'task.reset_tcp_xyz_m[{i}]', r,
                     f'must lie inside the workspace [{lo}, {hi}]')
        _finite('task.random_ee_range_xy_m', self.random_ee_range_xy_m)
        _require(0 <= self.random_ee_range_xy_m <= 0.1, 'task.random_ee_range_xy_m',
                 self.random_ee_range_xy_m, 'must be in [0, 0.1] m')
        _finite('task.reset_gripper_rad', self.reset_gripper_rad)
        _finite('task.reset_delay_s', self.reset_delay_s)
        _require(0 <= self.reset_delay_s <= 60, 'task.reset_delay_s', self.reset_delay_s,
                 'must be in [0, 60] s')
        _finite('task.reset_timeout_s', self.reset_timeout_s)
        _require(1 <= self.reset_timeout_s <= 300, 'task.reset_timeout_s', self.reset_timeout_s,
                 'must be in [1, 300] s')
        _positive('task.lift_height_m', self.lift_height_m)
        _finite('task.success_reward', self.success_reward)
        _finite('task.step_penalty', self.step_penalty)
        _require(isinstance(self.success_frames_to_end, int) and
                 self.success_frames_to_end >= 1, 'task.success_frames_to_end',
                 self.success_frames_to_end, 'must be an integer >= 1')
        _require(isinstance(self.min_steps_before_success, int) and
                 self.min_steps_before_success >= 0, 'task.min_steps_before_success',
                 self.min_steps_before_success, 'must be an integer >= 0')
        _require(self.min_steps_before_success + self.success_frames_to_end <=
                 self.max_episode_steps, 'task.min_steps_before_success',
                 self.min_steps_before_success,
                 f'+ task.success_frames_to_end={self.success_frames_to_end} exceeds the '
                 f'{self.max_episode_steps} steps of an episode: success could never end one')
        if self.classifier_threshold is not None:
            _finite('task.classifier_threshold', self.classifier_threshold)
            _require(0 < self.classifier_threshold < 1, 'task.classifier_threshold',
                     self.classifier_threshold, "must be in (0, 1) (null: the classifier's own)")
        _finite('task.gripper_penalty', self.gripper_penalty)
        _require(self.gripper_penalty >= 0, 'task.gripper_penalty', self.gripper_penalty,
                 'must be >= 0 (it is subtracted, as step_penalty)')
        _finite('task.gripper_dead_band', self.gripper_dead_band)
        _require(0 <= self.gripper_dead_band < 1, 'task.gripper_dead_band',
                 self.gripper_dead_band, 'must be in [0, 1) (the action is in [-1, 1])')
        _finite('task.gripper_closed_below_rad', self.gripper_closed_below_rad)

    @property
    def max_episode_steps(self) -> int:
        return int(round(self.episode_time_s * self.control_rate_hz))


@dataclass(frozen=True)
class PolicyConfig:
    """What the actor runs: the image encoder, the latent and MLP sizes, the squashed Gaussian
    head (also the sizes of the critics the algorithm builds beside it)."""
    encoder: str = 'resnet10'              # resnet10 | small_conv
    freeze_encoder: bool = True            # needs pretrained_encoder_path (never frozen random)
    # A directory with config.json + model.safetensors, or a Hugging Face repo id found in the
    # local cache (never downloaded): the seed's ResNet-10 is helper2424/resnet10.
    pretrained_encoder_path: Optional[str] = DEFAULT_REPO
    latent_dim: int = 256
    hidden_dims: Tuple[int, ...] = (256, 256)
    squash: str = 'tanh'
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # How the actor runs a frozen backbone: torch (a TorchScript trace) or onnxruntime (needs
    # `pip install onnxruntime onnx`; about twice as fast on a CPU, bench/actor_backends.py),
    # checked against the torch graph at start-up and left for the trace when it differs.
    acting_backend: str = 'torch'

    def __post_init__(self):
        _require(self.acting_backend in ('torch', 'onnxruntime'), 'policy.acting_backend',
                 self.acting_backend, "must be 'torch' or 'onnxruntime'")
        _require(self.encoder in ('resnet10', 'small_conv'), 'policy.encoder', self.encoder,
                 "must be 'resnet10' or 'small_conv'")
        if self.freeze_encoder and not self.pretrained_encoder_path:
            raise ConfigError(frozen_without_weights_message('policy'))
        _require(self.encoder == 'resnet10' or self.pretrained_encoder_path != DEFAULT_REPO,
                 'policy.pretrained_encoder_path', self.pretrained_encoder_path,
                 f'is the ResNet-10 (the default); with policy.encoder={self.encoder!r} set it to '
                 'null, or to the pretrained_model directory of a run that trained that encoder')
        _require(len(self.hidden_dims) >= 1 and all(h > 0 for h in self.hidden_dims),
                 'policy.hidden_dims', self.hidden_dims, 'needs positive layer sizes')
        _require(self.latent_dim > 0, 'policy.latent_dim', self.latent_dim, 'must be > 0')
        _require(self.squash in SQUASH_RANGES, 'policy.squash', self.squash,
                 f'choose from {sorted(SQUASH_RANGES)}')
        _require(self.log_std_min < self.log_std_max, 'policy.log_std_min', self.log_std_min,
                 f'must be < policy.log_std_max={self.log_std_max}')


@dataclass(frozen=True)
class AlgorithmConfig:
    """SAC + DrQ updates: critics, targets, temperature, optimisers, augmentation."""
    batch_size: int = 256
    utd_ratio: int = 20                    # critic updates per actor update
    discount: float = 0.97
    tau: float = 0.005
    temperature_init: float = 0.01
    use_backup_entropy: bool = False       # subtract alpha * log_prob in the TD target
    target_entropy: Optional[float] = None  # None -> -dim(A)/2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    num_critics: int = 2
    num_subsample_critics: Optional[int] = None
    critic_layer_norm: bool = True
    grad_clip_norm: float = 40.0
    # Behaviour cloning on human-intervention (and demo) samples in the actor loss, weighted
    # relative to the batch's mean |Q| (TD3+BC-style, scale-free); 0 = plain SAC (HIL-SERL).
    bc_weight: float = 0.0
    use_augmentation: bool = True
    augmentation_pad: int = 4
    # Frozen encoder only: features of this many random shifts per stored image are computed
    # once, at insertion, and each update samples one of them (0: encode every batch).
    feature_cache_shifts: int = 0

    def __post_init__(self):
        _require(self.batch_size >= 2, 'algorithm.batch_size', self.batch_size, 'must be >= 2')
        _require(isinstance(self.utd_ratio, int) and self.utd_ratio >= 1, 'algorithm.utd_ratio',
                 self.utd_ratio, 'must be an integer >= 1')
        _finite('algorithm.discount', self.discount)
        _require(0 < self.discount < 1, 'algorithm.discount', self.discount, 'must be in (0, 1)')
        _unit_interval('algorithm.tau', self.tau, closed_low=False)
        _positive('algorithm.temperature_init', self.temperature_init)
        if self.target_entropy is not None:
            _finite('algorithm.target_entropy', self.target_entropy)
        for name in ('actor_lr', 'critic_lr', 'temperature_lr', 'grad_clip_norm'):
            _positive(f'algorithm.{name}', getattr(self, name))
        _finite('algorithm.bc_weight', self.bc_weight)
        _require(self.bc_weight >= 0, 'algorithm.bc_weight', self.bc_weight, 'must be >= 0')
        _require(self.num_critics >= 1, 'algorithm.num_critics', self.num_critics,
                 'must be >= 1')
        if self.num_subsample_critics is not None:
            _require(1 <= self.num_subsample_critics <= self.num_critics,
                     'algorithm.num_subsample_critics', self.num_subsample_critics,
                     f'must be in [1, num_critics={self.num_critics}]')
        _require(0 <= self.augmentation_pad <= 16, 'algorithm.augmentation_pad',
                 self.augmentation_pad, 'must be in [0, 16] px')
        _require(isinstance(self.feature_cache_shifts, int) and
                 0 <= self.feature_cache_shifts <= 16, 'algorithm.feature_cache_shifts',
                 self.feature_cache_shifts, 'must be an integer in [0, 16]')


@dataclass(frozen=True)
class ReplayConfig:
    """The learner's two buffers and how a batch mixes them (RLPD is configuration)."""
    online_ratio: float = 0.5              # fraction of each batch from the online buffer
    online_buffer_capacity: int = 200_000
    offline_buffer_capacity: int = 5_000
    # Where the learner's replay images live: 'file' (an unnamed temporary file in the run
    # directory, read back with pread: the OS page cache holds the pixels, not the learner
    # process; freed at exit, even after a crash) or 'memory' (numpy arrays in the process).
    replay_image_storage: str = 'file'

    def __post_init__(self):
        _unit_interval('replay.online_ratio', self.online_ratio)
        _require(self.replay_image_storage in ('file', 'memory'), 'replay.replay_image_storage',
                 self.replay_image_storage, "must be 'file' or 'memory'")
        for name in ('online_buffer_capacity', 'offline_buffer_capacity'):
            _require(getattr(self, name) >= 1, f'replay.{name}', getattr(self, name),
                     'must be >= 1')


@dataclass(frozen=True)
class LearnerConfig:
    """The learner process: when it starts updating, pushes weights, checkpoints; its device."""
    learning_starts: int = 100
    weight_push_period_s: float = 2.0
    checkpoint_every_steps: int = 500
    # Also checkpoint at least this often (s): a crash early in a first run keeps its buffers.
    checkpoint_every_s: float = 300.0
    # Checkpoints kept on disk: older ones are deleted after each save, never the newest nor
    # the one the run resumed from (0: keep every checkpoint).
    keep_last_checkpoints: int = 3
    device: str = 'auto'                   # auto (CUDA when present) | cpu | cuda | cuda:N

    def __post_init__(self):
        _require(self.device == 'auto' or self.device == 'cpu' or
                 self.device.startswith('cuda'), 'learner.device', self.device,
                 "must be 'auto', 'cpu' or 'cuda[:N]'")
        for name in ('weight_push_period_s', 'checkpoint_every_s'):
            _positive(f'learner.{name}', getattr(self, name))
        _require(self.learning_starts >= 0, 'learner.learning_starts', self.learning_starts,
                 'must be >= 0')
        _require(self.checkpoint_every_steps >= 1, 'learner.checkpoint_every_steps',
                 self.checkpoint_every_steps, 'must be >= 1')
        _require(isinstance(self.keep_last_checkpoints, int) and
                 self.keep_last_checkpoints >= 0, 'learner.keep_last_checkpoints',
                 self.keep_last_checkpoints, 'must be an integer >= 0 (0: keep all)')


# Configurations written before the split had one `sac:` section: its keys, by new section.
SPLIT_SAC_SECTIONS = ('policy', 'algorithm', 'replay', 'learner')


@dataclass(frozen=True)
class SimConfig:
    """The simulated clock (sim backend only; hardware runs on wall-clock time)."""
    # Optimisation steps the learner must have done per received transition before the
    # simulated world advances again: a slow or loaded CPU slows the clock, not learning.
    min_updates_per_step: float = 1.0
    action_timeout_s: float = 2.0          # wall clock: a tick without its action holds the arm

    def __post_init__(self):
        _finite('sim.min_updates_per_step', self.min_updates_per_step)
        _require(self.min_updates_per_step >= 0, 'sim.min_updates_per_step',
                 self.min_updates_per_step, 'must be >= 0 (0: the clock does not wait)')
        _positive('sim.action_timeout_s', self.action_timeout_s)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the hardware (robot YAML)."""
    action: ActionConfig = field(default_factory=ActionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    observation: ObservationConfig = field(default_factory=ObservationConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    seed: int = 0

    def __post_init__(self):
        _require(self.algorithm.feature_cache_shifts == 0 or self.policy.freeze_encoder,
                 'algorithm.feature_cache_shifts', self.algorithm.feature_cache_shifts,
                 'needs policy.freeze_encoder: true (a trained encoder changes its features)')
        # The seed's bug: gripper bounds [0, 2] while tanh outputs [-1, 1] -> refuse it here.
        squash_low, squash_high = SQUASH_RANGES[self.policy.squash]
        for i, name in enumerate(self.action.names):
            lo, hi = self.action.low[i], self.action.high[i]
            if (lo, hi) != (squash_low, squash_high):
                raise ConfigError(
                    f'action bounds for {name!r} are [{lo:g}, {hi:g}] but the policy\'s '
                    f'{self.policy.squash} squashing outputs [{squash_low:g}, {squash_high:g}]; '
                    'they must be equal (scale in the driver, not in the action space)')
        _require(tuple(self.action.names) == ACTION_NAMES, 'action.names', self.action.names,
                 f'the SO-101 driver expects {ACTION_NAMES}')
        _require(not self.task.classifier_requires_gripper_closed or
                 self.observation.gripper_index is not None,
                 'task.classifier_requires_gripper_closed', True,
                 f'needs the gripper position in the state: observation.state_features '
                 f'{list(self.observation.state_features)} has neither joint_pos nor gripper_pos')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def image_shape(self, image_hw=None) -> Tuple[int, int, int]:
        """(C, H, W) of an observation image: 3 channels per stacked frame per camera (camera-
        major) at the policy view's size (or `image_hw`, e.g. a checkpoint's)."""
        height, width = tuple(image_hw or self.image.resize_hw_px)
        return (3 * self.observation.n_obs_steps * len(self.image.cameras), height, width)

    def digest(self) -> str:
        """Short stable hash of the configuration (stored in episode metadata). Prefixed so that it
        never reads as a number: a bare '4410147259e4' is a float to ROS's parameter-file parser."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return 'cfg-' + hashlib.sha256(text.encode()).hexdigest()[:12]


def _coerce(tp, value, path: str):
    """Convert a YAML value to the annotated type, or raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, path)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{path}={value!r}: must be a list')
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f'{path}[{i}]') for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f'{path}={value!r}: needs {len(args)} values')
        return tuple(_coerce(a, v, f'{path}[{i}]') for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{path}={value!r}: must be true or false')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{path}={value!r}: must be an integer')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{path}={value!r}: must be a number')
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{path}={value!r}: must be a string')
        return value
    return value


def from_dict(cls, data, path: str = ''):
    """Build dataclass `cls` from a mapping; unknown keys are errors, missing keys default."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path or cls.__name__}={data!r}: must be a mapping')
    if cls is TrainConfig and 'sac' in data:
        data = split_sac_section(data)
    if cls is ImageConfig:
        data = flat_image_section(data, path or 'image')
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = path or 'top level'
        raise ConfigError(f'{where}: unknown keys {unknown}; known: {sorted(fields)}')
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f'{path}.{name}' if path else name)
    return cls(**kwargs)


def _section_owners() -> Dict[str, str]:
    classes = (PolicyConfig, AlgorithmConfig, ReplayConfig, LearnerConfig)
    return {f.name: name for name, cls in zip(SPLIT_SAC_SECTIONS, classes)
            for f in dataclasses.fields(cls)}


def with_fields(cfg: TrainConfig, **fields) -> TrainConfig:
    """`cfg` with fields of the policy, algorithm, replay and learner sections replaced by
    name (each name belongs to one section), validated as a whole."""
    owners, changes = _section_owners(), {}
    for name, value in fields.items():
        if name not in owners:
            raise ConfigError(f'{name}: not a field of {", ".join(SPLIT_SAC_SECTIONS)}')
        changes.setdefault(owners[name], {})[name] = value
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)
                                       for section, values in changes.items()})


def split_sac_section(data: dict) -> dict:
    """A configuration written before the split (one `sac:` section, as in checkpoints and run
    directories of earlier versions): each key moved to its section. A key also given in its
    new section, or unknown, is an error naming it."""
    sac = data['sac'] or {}
    if not isinstance(sac, dict):
        raise ConfigError(f'sac={sac!r}: must be a mapping')
    sections = {name: dict(data.get(name) or {}) for name in SPLIT_SAC_SECTIONS}
    owners = _section_owners()
    for key, value in sac.items():
        if key not in owners:
            raise ConfigError(f'sac: unknown key {key!r}; the sac section was split into '
                              f'{", ".join(SPLIT_SAC_SECTIONS)}, known: {sorted(owners)}')
        section = owners[key]
        if key in sections[section]:
            raise ConfigError(f'sac.{key} and {section}.{key} are both given; keep {section}.{key}')
        sections[section][key] = value
    return {**{k: v for k, v in data.items() if k != 'sac'},
            **{name: values for name, values in sections.items() if values}}


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {str(path)!r} does not exist')
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f'config file {str(path)!r} is not valid YAML: {exc}') from None
    return data or {}


def load_train_config(path=None, overrides: Optional[dict] = None) -> TrainConfig:
    """Load a TrainConfig from YAML (None -> defaults), applying nested `overrides`. A
    checkpoint's pretrained_model/config.json (JSON is YAML) holds its TrainConfig under
    `train_config`: it loads too, so eval runs on the checkpoint's own configuration."""
    data = load_yaml(path) if path is not None else {}
    if isinstance(data, dict) and 'train_config' in data and 'image_shape' in data:
        data = data['train_config']
    if overrides:
        data = _deep_merge(data, overrides)
    return from_dict(TrainConfig, data)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def save_config(config, path) -> None:
    """Write a config dataclass as YAML atomically (tmp file + rename)."""
    write_text_atomic(path, yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
