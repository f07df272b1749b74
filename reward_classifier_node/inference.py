"""Per-frame success detection: probability, threshold, and a debounce of N consecutive frames
(single-frame decisions are what teach a policy to fake success)."""
from __future__ import annotations

import time
from collections import deque
from typing import Optional, Sequence, Tuple

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
