"""Simulated time for the simulated arm, without ROS: when the world may advance one control
period, and whether the learner has kept up.

The simulation driver owns time: it publishes the state of tick k stamped with simulated time
t_k, waits for the action that answers t_k (the actor echoes the stamp), then advances physics by
exactly one control period. A loaded CPU therefore slows the simulated clock, never the world
against the policy. An action that does not come within `action_timeout_s` of wall time holds the
arm for that tick (counted), as the watchdog does on hardware.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hilserl.configuration.parameters import param

# Simulated time starts here rather than at 0, which ROS reads as "no time received yet".
SIM_START_NS = 1_000_000_000


@dataclass(frozen=True)
class SimClockConfig:
    control_rate_hz: float = param(10.0, 'sim_clock: control ticks per simulated second (Hz)',
                                   float_range=(1.0, 100.0))
    action_timeout_s: float = param(2.0, 'sim_clock: wall time a tick waits for its action '
                                    'before holding (s)', float_range=(0.01, 600.0))
    max_real_time_factor: float = param(0.0, 'sim_clock: at most this many simulated seconds '
                                        'per wall second (0: no limit; 1 for a person at the '
                                        'keys)', float_range=(0.0, 100.0))
    min_updates_per_step: float = param(0.0, 'sim_clock: wait until the learner did this many '
                                        'optimisation steps per transition (0: do not wait)',
                                        float_range=(0.0, 1000.0))
    pacing_slack_steps: int = 2            # transitions in flight the pacing tolerates
    learner_silence_s: float = 120.0       # wall: a learner this quiet no longer paces

    def __post_init__(self):
        for name in ('control_rate_hz', 'action_timeout_s', 'learner_silence_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f'{name}={value!r}: must be a finite number > 0')
        for name in ('max_real_time_factor', 'min_updates_per_step'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f'{name}={value!r}: must be a finite number >= 0')
        if self.pacing_slack_steps < 0:
            raise ValueError(f'pacing_slack_steps={self.pacing_slack_steps}: must be >= 0')

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))


class LearnerPacer:
    """Holds the clock while the learner is behind `min_updates_per_step` optimisation steps
    per received transition (counted from when it started training). A learner that never
    reported, is not training yet, or has been silent for `learner_silence_s` does not pace."""

    def __init__(self, cfg: SimClockConfig):
        self.cfg = cfg
        self.baseline = None            # (received, steps) when training was first seen
        self.received = self.steps = 0
        self.last_report_s: Optional[float] = None

    def on_progress(self, received: int, steps: int, training: bool, wall_s: float) -> None:
        self.received, self.steps = int(received), int(steps)
        self.last_report_s = wall_s
        if training and self.baseline is None:
            self.baseline = (self.received, self.steps)
        if self.baseline is not None and (self.received < self.baseline[0] or
                                          self.steps < self.baseline[1]):
            self.baseline = (self.received, self.steps)  # the learner restarted

    def owed_updates(self) -> float:
        if self.baseline is None:
            return 0.0
        transitions = self.received - self.baseline[0] - self.cfg.pacing_slack_steps
        return self.cfg.min_updates_per_step * transitions - (self.steps - self.baseline[1])

    def allows_step(self, wall_s: float) -> bool:
        if self.cfg.min_updates_per_step <= 0 or self.last_report_s is None:
            return True
        if wall_s - self.last_report_s > self.cfg.learner_silence_s:
            return True
        return self.owed_updates() <= 0


class LockStepClock:
    """Tick bookkeeping of the simulated clock. `now_ns` is the stamp of the latest published
    observation; `offer()` takes the action answering it; `due()` says whether to advance."""

    def __init__(self, cfg: SimClockConfig, start_ns: int = SIM_START_NS):
        self.cfg = cfg
        self.now_ns = int(start_ns)
        self.ticks = 0
        self.pending: Optional[np.ndarray] = None
        self.waiting_since_s: Optional[float] = None   # wall time the wait for an action began
        self.last_advance_s: Optional[float] = None
        self._paced = False
        self.counters = {'ticks': 0, 'missed_actions': 0, 'stale_actions': 0,
                         'duplicate_actions': 0, 'paced_waits': 0}

    def offer(self, action: np.ndarray, stamp_ns: Optional[int]) -> str:
        """'accepted' | 'stale' (answers an earlier tick) | 'duplicate' (tick already has one).
        An unstamped action (a user's `ros2 topic pub`) answers the current tick."""
        if stamp_ns is not None and stamp_ns != self.now_ns:
            self.counters['stale_actions'] += 1
            return 'stale'
        if self.pending is not None:
            self.counters['duplicate_actions'] += 1
            return 'duplicate'
        self.pending = np.asarray(action, dtype=np.float64)
        return 'accepted'

    def due(self, wall_s: float, pacing_ok: bool = True) -> Optional[str]:
        """None (keep waiting), 'act' (advance with the pending action) or 'hold' (advance
        without one: it did not come in time)."""
        if self.waiting_since_s is None:
            self.waiting_since_s = wall_s
        if not pacing_ok:
            self.counters['paced_waits'] += not self._paced  # ticks that waited for the learner
            self._paced = True
            self.waiting_since_s = wall_s  # the action timeout runs only while not paced
            return None
        if self.cfg.max_real_time_factor > 0 and self.last_advance_s is not None:
            period_s = 1.0 / (self.cfg.control_rate_hz * self.cfg.max_real_time_factor)
            if wall_s - self.last_advance_s < period_s:
                return None
        if self.pending is not None:
            return 'act'
        if wall_s - self.waiting_since_s >= self.cfg.action_timeout_s:
            self.counters['missed_actions'] += 1
            return 'hold'
        return None

    def take(self) -> Optional[np.ndarray]:
        action, self.pending = self.pending, None
        return action

    def advanced(self, wall_s: float) -> int:
        """Record one control period done; returns the new `now_ns`."""
        self.now_ns += self.cfg.period_ns
        self.ticks += 1
        self.counters['ticks'] = self.ticks
        self.pending = None
        self._paced = False
        self.waiting_since_s = wall_s
        self.last_advance_s = wall_s
        return self.now_ns
