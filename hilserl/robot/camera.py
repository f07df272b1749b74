"""Gripper camera supervision (ROS-free): frame validation, retry and reopen with backoff.

A blank frame (near-uniform), a frozen stream (identical consecutive frames) or a failed read is
never published as valid: the supervisor retries, then reopens the device with bounded
exponential backoff, and reports what happened through counters and a status level.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from hilserl.configuration.parameters import param

OK, WARN, ERROR = 0, 1, 2


@dataclass(frozen=True)
class CameraConfig:
    """The gripper camera node's parameters (param fields) and the supervisor's settings."""
    device: str = param('/dev/video0', 'device path or index')  # an index as text
    width_px: int = param(640, 'frame width (px)', int_range=(16, 4096))
    height_px: int = param(480, 'frame height (px)', int_range=(16, 4096))
    fps: float = param(30.0, 'capture and publish rate (Hz)', float_range=(1.0, 120.0))
    fourcc: str = param('MJPG', 'capture pixel format')
    # frame std below this (0-255 scale) = blank
    blank_std_threshold: float = param(2.0, 'frames with a lower pixel std are blank',
                                       float_range=(0.0, 50.0))
    # this many identical consecutive frames = frozen; 0 = off (for renders: a still simulated
    # scene is identical frame after frame)
    frozen_frames_limit: int = param(
        5, 'identical consecutive frames that mean a frozen stream (0 = off)',
        int_range=(0, 1000))
    max_consecutive_failures: int = param(3, 'bad frames before reopening the device',
                                          int_range=(1, 100))
    reopen_backoff_s: float = 0.5        # first reopen delay, doubled each time
    max_backoff_s: float = param(8.0, 'longest reopen delay (s)', float_range=(0.5, 60.0))

    def __post_init__(self):
        if self.width_px <= 0 or self.height_px <= 0:
            raise ValueError(f'width_px/height_px={self.width_px}x{self.height_px}: must be > 0')
        if not 0 < self.fps <= 240:
            raise ValueError(f'fps={self.fps}: must be in (0, 240]')
        if len(self.fourcc) != 4:
            raise ValueError(f'fourcc={self.fourcc!r}: must be 4 characters')
        if self.frozen_frames_limit == 1 or self.frozen_frames_limit < 0:
            raise ValueError(f'frozen_frames_limit={self.frozen_frames_limit}: must be 0 (off) '
                             'or >= 2')
        if self.max_consecutive_failures < 1:
            raise ValueError('max_consecutive_failures must be >= 1')
        if not 0 < self.reopen_backoff_s <= self.max_backoff_s:
            raise ValueError('need 0 < reopen_backoff_s <= max_backoff_s')


def frame_problem(frame: Optional[np.ndarray], expected_hw: Tuple[int, int],
                  blank_std_threshold: float) -> Optional[str]:
    """Why a frame is unusable, or None if it is fine."""
    if frame is None:
        return 'read failed'
    if frame.ndim != 3 or frame.shape[:2] != tuple(expected_hw):
        return f'unexpected frame shape {frame.shape}, expected {expected_hw}'
    # Subsample: a blank frame is uniform everywhere, so a grid of pixels decides it cheaply.
    if float(frame[::8, ::8].std()) < blank_std_threshold:
        return 'blank frame'
    return None


@dataclass
class CameraCounters:
    frames_ok: int = 0
    blank_frames: int = 0
    frozen_frames: int = 0
    failed_reads: int = 0
    bad_shape_frames: int = 0
    reopens: int = 0
    open_failures: int = 0


class OpenCVSource:
    """cv2.VideoCapture behind a small interface; `capture_factory` is the OpenCV boundary."""

    def __init__(self, config: CameraConfig, capture_factory: Optional[Callable] = None):
        import cv2
        self._cv2 = cv2
        self.cfg = config
        self._factory = capture_factory or cv2.VideoCapture
        self._capture = None

    def open(self) -> bool:
        cv2 = self._cv2
        device = int(self.cfg.device) if str(self.cfg.device).isdigit() else self.cfg.device
        capture = self._factory(device)
        if capture is None or not capture.isOpened():
            return False
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.cfg.fourcc))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width_px)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height_px)
        capture.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        self._capture = capture
        return True

    def read(self) -> Optional[np.ndarray]:
        """RGB frame or None."""
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if not ok or frame is None:
            return None
        return frame[:, :, ::-1]  # OpenCV gives BGR

    def release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class CameraSupervisor:
    """Calls `source.read()`; returns only valid frames, recovering the device when needed."""

    def __init__(self, source, config: CameraConfig, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.cfg = config
        self.clock = clock
        self.counters = CameraCounters()
        self.consecutive_failures = 0
        self.is_open = False
        self.last_problem = ''
        self._identical = 0
        self._previous: Optional[np.ndarray] = None
        self._next_open_s = 0.0
        self._backoff_s = config.reopen_backoff_s

    def _try_open(self) -> bool:
        now = self.clock()
        if now < self._next_open_s:
            return False
        if self.source.open():
            self.is_open = True
            self._backoff_s = self.cfg.reopen_backoff_s
            self.consecutive_failures = 0
            self._previous = None
            self._identical = 0
            return True
        self.counters.open_failures += 1
        self.last_problem = f'cannot open camera {self.cfg.device!r}'
        self._next_open_s = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.cfg.max_backoff_s)
        return False

    def poll(self) -> Optional[np.ndarray]:
        """One capture attempt: a valid RGB frame, or None (and the reason in last_problem)."""
        if not self.is_open and not self._try_open():
            return None
        frame = self.source.read()
        problem = frame_problem(frame, (self.cfg.height_px, self.cfg.width_px),
                                self.cfg.blank_std_threshold)
        if problem is None and self.cfg.frozen_frames_limit and self._previous is not None and \
                np.array_equal(frame[::4, ::4], self._previous):
            self._identical += 1
            if self._identical + 1 >= self.cfg.frozen_frames_limit:
                problem = f'frozen stream ({self._identical + 1} identical frames)'
        elif problem is None:
            self._identical = 0
        if problem is None:
            self._previous = frame[::4, ::4].copy()
            self.consecutive_failures = 0
            self.counters.frames_ok += 1
            return frame
        self._count(problem)
        self.last_problem = problem
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.cfg.max_consecutive_failures:
            self.source.release()
            self.is_open = False
            self.counters.reopens += 1
            self._next_open_s = self.clock() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.cfg.max_backoff_s)
            self.consecutive_failures = 0
        return None

    def _count(self, problem: str):
        if problem == 'read failed':
            self.counters.failed_reads += 1
        elif problem == 'blank frame':
            self.counters.blank_frames += 1
        elif problem.startswith('frozen'):
            self.counters.frozen_frames += 1
        else:
            self.counters.bad_shape_frames += 1

    def status(self) -> Tuple[int, str]:
        if not self.is_open:
            return ERROR, f'camera closed: {self.last_problem or "not opened yet"}'
        if self.consecutive_failures:
            return WARN, f'bad frames: {self.last_problem}'
        return OK, 'streaming'

    def close(self):
        self.source.release()
        self.is_open = False
