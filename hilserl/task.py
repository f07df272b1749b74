"""Grasp-and-lift episode bookkeeping: reward shaping, termination, truncation."""
from __future__ import annotations

from typing import Tuple

from hilserl.config import TaskConfig


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
        self.success_streak = 0
        self.episode_return = 0.0
        self.succeeded = False

    def step(self, success: bool, key_success: bool = False) -> Tuple[float, bool, bool]:
        """`success`: the detector's (classifier or ground truth) flag for this frame.
        `key_success`: the human pressed success; a person's judgement is final: the success
        reward and the end at once (no minimum step count, no streak of frames)."""
        self.steps += 1
        counted = bool(success) and self.steps > self.cfg.min_steps_before_success
        self.success_streak = self.success_streak + 1 if counted else 0
        reward = self.cfg.success_reward if counted or key_success else -self.cfg.step_penalty
        self.episode_return += reward
        terminated = key_success or self.success_streak >= self.cfg.success_frames_to_end
        self.succeeded |= terminated
        truncated = not terminated and self.steps >= self.cfg.max_episode_steps
        return reward, terminated, truncated
