"""One MP4 of one episode bag, one frame a step: the gripper camera's full frame and the policy's
view side by side, with the step, the executed action (and who chose it), the classifier's
success probability and the episode's result drawn on it (`hilserl eval --video`,
`hilserl replay --video`).

A step is an executed action (`action`, policy or human) before the actor's `end` event: the
simulated clock's hold at the end tick and anything after the end are not steps, so an eval
episode of N steps gives N frames. Each step shows the newest images at or before the tick it
answered (the action's `stamp_ns`, else its bag stamp)."""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hilserl.data.bags import EpisodeData, read_episode
from hilserl.data.video import encode_mp4
from hilserl.messages.conventions import ACTION_NAMES, ActionSource, Topics
from hilserl.messages.conversions import action_source, action_stamp_ns, image_to_array

# H.264 first: it plays everywhere (browsers, phones, any player); AV1 where PyAV lacks it.
EPISODE_VIDEO_CODECS = ('libx264', 'libsvtav1')
EPISODE_VIDEO_OPTIONS = {'libx264': {'crf': '20', 'preset': 'veryfast'},
                         'libsvtav1': {'crf': '30', 'preset': '10'}}
PANEL_HEIGHT_PX = 360
TEXT_BAND_PX = 96
DEFAULT_FPS = 10
VIDEO_TOPICS = (Topics.IMAGE_RAW, Topics.IMAGE_CROP, Topics.EE_ACTION,
                Topics.SUCCESS_PROBABILITY, Topics.SIM_SUCCESS, Topics.EPISODE_EVENTS)
_GREEN, _RED, _WHITE, _GREY = (40, 200, 60), (230, 50, 40), (255, 255, 255), (170, 170, 170)


@dataclass(frozen=True)
class VideoStep:
    """What one frame shows."""
    step: int                       # 1-based
    stamp_ns: int
    action: np.ndarray
    source: str                     # policy | human
    camera: Optional[np.ndarray]    # full frame (H, W, 3) RGB; None when the bag has none
    view: Optional[np.ndarray]      # the policy's view
    probability: Optional[float]    # the classifier's success probability
    sim_success: Optional[bool]     # simulation ground truth


def _end_stamp_ns(episode: EpisodeData) -> Optional[int]:
    for stamp, msg in episode.messages.get(Topics.EPISODE_EVENTS, []):
        try:
            event = json.loads(msg.data)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(event, dict) and event.get('event') == 'end':
            return stamp
    return None


class _Latest:
    """The newest message of a topic at or before a stamp."""

    def __init__(self, messages: Sequence[Tuple[int, object]]):
        self.stamps = [s for s, _ in messages]
        self.messages = [m for _, m in messages]

    def at(self, stamp_ns: int):
        i = bisect.bisect_right(self.stamps, stamp_ns) - 1
        return self.messages[i] if i >= 0 else None


def episode_steps(episode: EpisodeData) -> List[VideoStep]:
    """The episode's steps with what each frame shows (see the module's docstring)."""
    end_ns = _end_stamp_ns(episode)
    actions = []
    for stamp, msg in episode.messages.get(Topics.EE_ACTION, []):
        tick = action_stamp_ns(msg)
        tick = stamp if tick is None else tick
        if end_ns is None or tick < end_ns:
            actions.append((tick, msg))
    camera = _Latest(episode.messages.get(Topics.IMAGE_RAW, []))
    view = _Latest(episode.messages.get(Topics.IMAGE_CROP, []))
    probability = _Latest(episode.messages.get(Topics.SUCCESS_PROBABILITY, []))
    sim_success = _Latest(episode.messages.get(Topics.SIM_SUCCESS, []))
    steps = []
    for number, (tick, msg) in enumerate(actions, 1):
        raw, crop = camera.at(tick), view.at(tick)
        p, success = probability.at(tick), sim_success.at(tick)
        steps.append(VideoStep(
            number, tick, np.asarray(msg.data, np.float32), action_source(msg) or '?',
            None if raw is None else image_to_array(raw),
            None if crop is None else image_to_array(crop),
            None if p is None else float(p.data),
            None if success is None else bool(success.data)))
    return steps


def steps_fps(steps: Sequence[VideoStep]) -> int:
    """The control rate the steps were taken at (their median spacing), so the video plays in
    real time; DEFAULT_FPS for fewer than two steps."""
    gaps = np.diff([s.stamp_ns for s in steps])
    gaps = gaps[gaps > 0]
    if not len(gaps):
        return DEFAULT_FPS
    return int(min(max(round(1e9 / float(np.median(gaps))), 1), 120))


def _panel(image: Optional[np.ndarray], width: int, title: str, missing: str) -> np.ndarray:
    """`image` scaled to PANEL_HEIGHT_PX x width (the policy's few pixels kept sharp), titled."""
    import cv2
    if image is None:
        panel = np.full((PANEL_HEIGHT_PX, width, 3), 40, np.uint8)
        _text(panel, missing, (12, PANEL_HEIGHT_PX // 2), 0.45, _GREY)
    else:
        rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, -1)
        small = rgb.shape[0] < PANEL_HEIGHT_PX // 2
        panel = cv2.resize(np.ascontiguousarray(rgb, np.uint8), (width, PANEL_HEIGHT_PX),
                           interpolation=cv2.INTER_NEAREST if small else cv2.INTER_AREA)
    cv2.rectangle(panel, (0, 0), (width, 22), (0, 0, 0), -1)
    _text(panel, title, (8, 16), 0.5, _WHITE)
    return panel


def _text(image: np.ndarray, text: str, origin, scale: float, color, thickness: int = 1):
    import cv2
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness,
                cv2.LINE_AA)


def compose_frame(step: VideoStep, total_steps: int, metadata: dict,
                  has_camera: bool = True) -> np.ndarray:
    """One video frame (RGB, even width and height): camera | policy view over a text band.
    `has_camera`: the bag holds full camera frames (only this step has none)."""
    raw_w = PANEL_HEIGHT_PX * 4 // 3 if step.camera is None else \
        int(round(PANEL_HEIGHT_PX * step.camera.shape[1] / step.camera.shape[0]))
    view_w = PANEL_HEIGHT_PX if step.view is None else \
        int(round(PANEL_HEIGHT_PX * step.view.shape[1] / step.view.shape[0]))
    view_size = '' if step.view is None else f' {step.view.shape[1]}x{step.view.shape[0]}'
    left = _panel(step.camera, raw_w + raw_w % 2, 'gripper camera',
                  'no camera frame yet' if has_camera else
                  'no full camera frame in this bag (eval --video records it)')
    right = _panel(step.view, view_w + view_w % 2, f'policy view{view_size}', 'no view yet')
    top = np.concatenate([left, right], axis=1)
    band = np.full((TEXT_BAND_PX, top.shape[1], 3), 20, np.uint8)
    outcome = str(metadata.get('outcome', 'unfinished')).upper()
    success = bool(metadata.get('success'))
    episode = metadata.get('episode', '?')
    _text(band, f'episode {episode}   step {step.step}/{total_steps}', (10, 26), 0.65, _WHITE, 2)
    _text(band, f'result: {outcome}', (top.shape[1] - 260, 26), 0.65,
          _GREEN if success else _RED, 2)
    values = '  '.join(f'{name} {value:+.2f}' for name, value in zip(ACTION_NAMES, step.action))
    who = 'HUMAN' if step.source == ActionSource.HUMAN else step.source
    _text(band, f'action  {values}   ({who})', (10, 56), 0.55,
          (255, 200, 60) if step.source == ActionSource.HUMAN else _WHITE)
    p = 'n/a' if step.probability is None or not math.isfinite(step.probability) else \
        f'{step.probability:.2f}'
    truth = '' if step.sim_success is None else \
        f'   sim success {"yes" if step.sim_success else "no"}'
    _text(band, f'classifier p(success) {p}{truth}', (10, 84), 0.55, _WHITE)
    return np.concatenate([top, band], axis=0)


def write_episode_video(episode_dir, out_path, fps: Optional[int] = None) -> Tuple[Path, int]:
    """The episode's MP4 at `out_path` (fps: the control rate unless given); (path, frames).
    ValueError when the episode has no steps to show."""
    episode = read_episode(episode_dir, VIDEO_TOPICS)
    steps = episode_steps(episode)
    if not steps:
        raise ValueError(f'{episode_dir}: no executed actions in the bag, nothing to show')
    has_camera = bool(episode.messages.get(Topics.IMAGE_RAW))
    first = compose_frame(steps[0], len(steps), episode.metadata, has_camera)
    height, width = first.shape[:2]

    def frames():
        yield first
        for step in steps[1:]:
            frame = compose_frame(step, len(steps), episode.metadata, has_camera)
            if frame.shape[:2] != (height, width):  # a camera that changed size mid-episode
                import cv2
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            yield frame

    out_path = Path(out_path)
    encode_mp4(out_path, frames(), fps or steps_fps(steps), height, width,
               EPISODE_VIDEO_CODECS, EPISODE_VIDEO_OPTIONS)
    return out_path, len(steps)
