"""Per-frame success detection: probability, threshold, and a debounce of N consecutive frames
(single-frame decisions are what teach a policy to fake success)."""
from __future__ import annotations

import time
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.learning.task import Streak
from reward_classifier_node.model import RewardClassifier, success_probabilities


class SuccessDetector:
    def __init__(self, model: RewardClassifier, threshold: float, debounce_frames: int = 3):
        self.model = model.eval()
        self.set_threshold(threshold)
        if debounce_frames < 1:
            raise ValueError(f'debounce_frames={debounce_frames}: must be >= 1')
        self.debounce_frames = debounce_frames
        self.streak = Streak(debounce_frames)
        self.latencies_s = deque(maxlen=200)

    def set_threshold(self, threshold: float) -> None:
        if not (np.isfinite(threshold) and 0.0 < threshold < 1.0):
            raise ValueError(f'threshold={threshold}: must be in (0, 1)')
        self.threshold = float(threshold)

    def reset(self) -> None:
        self.streak.reset()

    def probability(self, views: Sequence[np.ndarray]) -> float:
        """(H, W, 3) uint8 view(s) of one frame -> success probability."""
        return float(success_probabilities(
            self.model, *[np.ascontiguousarray(v)[None] for v in views])[0])

    def update(self, views: Sequence[np.ndarray]) -> Tuple[float, bool]:
        """HWC uint8 view(s) -> (probability, debounced success)."""
        started = time.perf_counter()
        prob = self.probability(views)
        self.latencies_s.append(time.perf_counter() - started)
        return prob, self.streak.update(prob >= self.threshold)

    def latency_ms(self, quantile: float) -> Optional[float]:
        if not self.latencies_s:
            return None
        return float(np.quantile(np.array(self.latencies_s), quantile) * 1000)


class ViewAligner:
    """One frame of views per first-camera view: the first camera's (image.cameras order) sets
    the frame's stamp, and the frame is complete once every other camera has a view at least
    that new (its view of the same tick on the simulated clock, at most a frame later on
    cameras that tick apart). One camera: every view is a frame."""

    def __init__(self, cameras: Sequence[str]):
        self.cameras = tuple(cameras)
        self.latest: Dict[str, Tuple[int, np.ndarray]] = {}
        self.pending_ns: Optional[int] = None

    def add(self, camera: str, stamp_ns: int, view: np.ndarray) -> Optional[List[np.ndarray]]:
        """A camera's view; returns every camera's view (in order) when a frame is complete."""
        self.latest[camera] = (stamp_ns, view)
        if camera == self.cameras[0]:
            self.pending_ns = stamp_ns
        if self.pending_ns is None or any(
                c not in self.latest or self.latest[c][0] < self.pending_ns for c in self.cameras):
            return None
        self.pending_ns = None
        return [self.latest[c][1] for c in self.cameras]
