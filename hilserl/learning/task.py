"""Grasp-and-lift episode bookkeeping: reward shaping, termination, truncation."""
from __future__ import annotations

from typing import Tuple

from hilserl.configuration.config import TaskConfig


class Streak:
    """Consecutive frames a condition held, and whether `needed` of them have: the one
    debounce rule (the actor's success frames, the classifier node's debounced success, the
    classifier's evaluation over recorded episodes). A single frame is what a policy learns to
    fake."""

    def __init__(self, needed: int):
        if needed < 1:
            raise ValueError(f'needed={needed}: a streak needs at least 1 frame')
        self.needed = needed
        self.count = 0

    def update(self, holds: bool) -> bool:
        self.count = self.count + 1 if holds else 0
        return self.count >= self.needed

    def reset(self) -> None:
        self.count = 0


class RewardTracker:
    """Per-step reward and episode end from a success signal (classifier or ground truth).

    `terminated` (success held for `success_frames_to_end` frames) is separate from
    `truncated` (time limit): only the former stops bootstrapping.
    """

    def __init__(self, config: TaskConfig):
        self.cfg = config
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.success_streak = Streak(self.cfg.success_frames_to_end)
        self.episode_return = 0.0
        self.succeeded = False

    def step(self, success: bool, key_success: bool = False) -> Tuple[float, bool, bool]:
        """`success`: the detector's (classifier or ground truth) flag for this frame.
        `key_success`: the human pressed success; a person's judgement is final: the success
        reward and the end at once (no minimum step count, no streak of frames)."""
        self.steps += 1
        counted = bool(success) and self.steps > self.cfg.min_steps_before_success
        held = self.success_streak.update(counted)
        reward = self.cfg.success_reward if counted or key_success else -self.cfg.step_penalty
        self.episode_return += reward
        terminated = key_success or held
        self.succeeded |= terminated
        truncated = not terminated and self.steps >= self.cfg.max_episode_steps
        return reward, terminated, truncated
