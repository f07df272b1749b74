"""Grasp-and-lift episode bookkeeping: reward shaping, termination, truncation."""
from __future__ import annotations

from typing import Optional, Tuple

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


class GripperCommands:
    """What the gripper was last told, for the grasp penalty. The gripper action is a joint
    delta in [-1, 1] (the driver: x gripper_step_rad per step), so "open" and "closed" are
    commands, not positions: beyond +-dead_band an action commands closing (< 0) or opening
    (> 0), within it the gripper stays as told. A command that differs from the latched one
    changes the gripper's state; repeating it (the gripper takes several steps to close, or is
    stopped by the cube) or staying does not. This counts the chattering the penalty is for,
    whatever the jaws meet, as HIL-SERL's {close, stay, open} grasp actions do."""

    def __init__(self, dead_band: float, start_closed: bool):
        self.dead_band = dead_band
        self.start_closed = start_closed
        self.reset()

    def reset(self) -> None:
        self.closed = self.start_closed  # after a reset: as the reset left the gripper
        self.changes = 0

    def update(self, gripper_action: float) -> bool:
        """True when this executed gripper action changes the gripper's state."""
        if abs(gripper_action) <= self.dead_band:
            return False
        closing = gripper_action < 0
        if closing == self.closed:
            return False
        self.closed = closing
        self.changes += 1
        return True


class RewardTracker:
    """Per-step reward and episode end from a success signal (classifier or ground truth).

    `terminated` (success held for `success_frames_to_end` frames) is separate from
    `truncated` (time limit): only the former stops bootstrapping.
    """

    def __init__(self, config: TaskConfig):
        self.cfg = config
        self.gripper = GripperCommands(
            config.gripper_dead_band,
            start_closed=config.reset_gripper_rad < config.gripper_closed_below_rad)
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.success_streak = Streak(self.cfg.success_frames_to_end)
        self.episode_return = 0.0
        self.succeeded = False
        self.gripper.reset()
        self.open_gripper_successes = 0  # detector successes not counted: gripper open

    @property
    def gripper_changes(self) -> int:
        return self.gripper.changes

    def step(self, success: bool, key_success: bool = False,
             gripper_action: Optional[float] = None, gripper_rad: Optional[float] = None
             ) -> Tuple[float, bool, bool]:
        """`success`: the detector's (classifier or ground truth) flag for this frame.
        `key_success`: the human pressed success; a person's judgement is final: the success
        reward and the end at once (no minimum step count, no streak of frames).
        `gripper_action`: the executed gripper action of the step that led to this frame (the
        grasp penalty; None: no gripper command). `gripper_rad`: the gripper joint position in
        this frame (needed by task.classifier_requires_gripper_closed)."""
        self.steps += 1
        counted = bool(success) and self.steps > self.cfg.min_steps_before_success
        if counted and self.cfg.classifier_requires_gripper_closed:
            if gripper_rad is None:
                raise ValueError('task.classifier_requires_gripper_closed needs the gripper '
                                 'position of the frame')
            if not gripper_rad < self.cfg.gripper_closed_below_rad:
                counted = False
                self.open_gripper_successes += 1
        held = self.success_streak.update(counted)
        reward = self.cfg.success_reward if counted or key_success else -self.cfg.step_penalty
        if gripper_action is not None and self.gripper.update(float(gripper_action)):
            # in the reward the transition stores: every batch that samples it pays it
            reward -= self.cfg.gripper_penalty
        self.episode_return += reward
        terminated = key_success or held
        self.succeeded |= terminated
        truncated = not terminated and self.steps >= self.cfg.max_episode_steps
        return reward, terminated, truncated
