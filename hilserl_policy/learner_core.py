"""The sac_learner node's decisions, free of ROS: transitions-topic messages into the learner (one
stream decoder per arm; what was dropped or went missing, in words to log), when policy weights
are pushed, and what the progress topic, the summary line and the diagnostics say.
`learner_node.py` owns the threads, topics and logging; `hilserl_policy.learner.Learner` (or
anything with its counters and methods) the buffers and training.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry
from hilserl.data.transition import MissingPreviousImage, TransitionDecoder


def arm_prefix(robot: str) -> str:
    return f'{robot} ' if robot else ''


class WeightPushSchedule:
    """Weights go out at start, then after an update once `period_s` has passed since the last
    push; never twice for one optimisation step."""

    def __init__(self, period_s: float):  # learner.weight_push_period_s, validated there
        self.period_s = period_s
        self.pushed_step = -1
        self.pushed_at_s = 0.0

    def period_elapsed(self, now_s: float) -> bool:
        return now_s - self.pushed_at_s >= self.period_s

    def is_new(self, step: int) -> bool:
        return step != self.pushed_step

    def pushed(self, step: int, now_s: float) -> None:
        self.pushed_step, self.pushed_at_s = step, now_s


class LearnerCore:
    """The node feeds the messages of each arm (`robot`: its namespace, '' for one arm) and the
    time; it publishes and logs what comes back."""

    def __init__(self, learner, weight_push_period_s: float):
        self.learner = learner
        self.weights = WeightPushSchedule(weight_push_period_s)
        # one per arm: each image arrives once, in the transition it starts
        self.decoders: Dict[str, TransitionDecoder] = {}
        self.error: Optional[str] = None   # why ingestion or training stopped

    # --- the executor thread: decode and queue, nothing that waits -----------------------------
    def on_transition(self, data: bytes, robot: str = '') -> Optional[str]:
        """A transitions message of arm `robot`, queued for storing; a warning to log, if any."""
        decoder = self.decoders.setdefault(robot, TransitionDecoder())
        try:
            transition, header = decoder.decode(data)
        except MissingPreviousImage as exc:
            episode, step = exc.position[:2]
            self.learner.reject(f'image: {exc}', episode, step, robot)
            return f'transition dropped: {exc}'
        except ValueError as exc:
            self.learner.reject(f'undecodable: {exc}')
            return f'transition dropped: undecodable: {exc}'
        episode, step = int(header.get('episode', -1)), int(header.get('step', -1))
        missing = self.learner.submit(transition, episode, step, robot)
        if missing:
            return (f'{missing} transitions missing before {arm_prefix(robot)}episode {episode} '
                    f'step {step} (lost between actor and learner)')
        return None

    def on_event(self, text: str, robot: str = '') -> Optional[str]:
        """An episode/events message of arm `robot`: an `end` is counted and checked against
        the transitions that arrived; a warning to log, if any."""
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            return None
        if event.get('event') != 'end':
            return None
        missing = self.learner.episode_ended(event, robot)
        if missing:
            return (f'{arm_prefix(robot)}episode {event.get("episode")} ended with '
                    f'{event.get("steps")} steps; its last {missing} transitions did not arrive')
        return None

    # --- the worker threads --------------------------------------------------------------------
    def failed(self, what: str, exc: Exception) -> str:
        """Ingestion or training stopped: the error the diagnostics report, and the log line."""
        self.error = f'{what} stopped: {type(exc).__name__}: {exc}'
        return self.error

    def progress(self) -> List[int]:
        """learner/progress: [received, stored, optimisation steps, training 0/1]."""
        counts = self.learner.counts
        return [counts['received'], counts['stored'], self.learner.agent.step,
                int(self.learner.ready())]

    # --- reporting -----------------------------------------------------------------------------
    def transfer_summary(self) -> str:
        c = self.learner.counts
        text = (f'transitions received {c["received"]}, stored {c["stored"]}, dropped '
                f'{c["dropped"]}, missing {c["missing"]}')
        pending = self.learner.pending
        return text + (f', queued {pending}' if pending else '')

    def summary(self, run_dir_bytes: int) -> Tuple[str, DiagnosticEntry]:
        """The periodic progress line and the diagnostics entry; `run_dir_bytes`: the run
        directory's size on disk."""
        learner = self.learner
        m = learner.last_metrics
        episodes, successes = learner.episode_counts()
        line = (f'episodes {episodes} ({successes} successful; {learner.recent_summary()})  '
                f'{self.transfer_summary()}  buffers {len(learner.online)}/'
                f'{len(learner.offline)}  step {learner.agent.step}  critic updates/s '
                f'{learner.critic_updates_per_s:.2f}  run dir '
                f'{run_dir_bytes / 1e9:.2f} GB on disk')
        if m:
            line += f'  critic_loss {m["critic_loss"]:.3f}  alpha {m["alpha"]:.4f}'
        c = learner.counts
        lost = c['dropped'] or c['missing']
        level = WARN if self.error or lost else OK
        values = {'step': str(learner.agent.step), 'error': self.error or '',
                  **{k: str(v) for k, v in c.items()},
                  'queued': str(learner.pending),
                  'drop_reasons': json.dumps(dict(learner.drop_reasons)),
                  'out_of_order': str(sum(sequence.out_of_order
                                          for sequence in learner.sequences.values())),
                  'episodes': str(episodes), 'successes': str(successes),
                  'critic_updates_per_s': f'{learner.critic_updates_per_s:.3f}'}
        message = self.error or ('transitions lost' if lost else 'training')
        return line, DiagnosticEntry('sac_learner', level, message, values)
