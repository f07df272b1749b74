"""The sac_learner node's decisions, free of ROS: transitions-topic messages into the learner (one
stream decoder per arm; what was dropped or went missing, in words to log), when policy weights
are pushed, and what the progress topic, the summary line and the diagnostics say.
`learner_node.py` owns the threads, topics and logging; `hilserl_policy.learner.Learner` (or
anything with its counters and methods) the buffers and training.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

from hilserl.messages.conversions import event_from_json
from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry
from hilserl.data.transition import InvalidTransition, MissingPreviousImage, TransitionDecoder


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


def checked_end_event(text: str) -> Optional[dict]:
    """An actor's `end` event (episode/events JSON) with the fields the learner keeps, of the
    types the actor writes; None for any other event; ValueError for anything malformed (any
    participant can publish on the topic)."""
    event = event_from_json(text)
    if event is None:
        raise ValueError('not a JSON object')
    if event.get('event') != 'end':
        return None
    for key in ('episode', 'steps', 'interventions'):
        value = event.get(key, 0)
        if key != 'interventions' and key not in event or type(value) is not int or value < 0:
            raise ValueError(f'end event {key} {event.get(key, "missing")!r}: not an integer '
                             '>= 0')
    value = event.get('return', 0.0)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f'end event return {value!r}: not a finite number')
    if type(event.get('success', False)) is not bool or \
            not isinstance(event.get('outcome', ''), str):
        raise ValueError('end event success is not a boolean or outcome not a string')
    return event


class LearnerCore:
    """The node feeds the messages of each arm (`robot`: its namespace, '' for one arm) and the
    time; it publishes and logs what comes back."""

    def __init__(self, learner, weight_push_period_s: float,
                 expected: Optional[Tuple[Sequence[int], int, int]] = None):
        """`expected`: (image shape, state dim, action dim) every transition is checked
        against as it arrives (its decoder's `expected`); the buffers check again."""
        self.learner = learner
        self.weights = WeightPushSchedule(weight_push_period_s)
        # one per arm and publisher: each image arrives once, in the transition it starts, and
        # no other publisher's message can stand in for a stream's previous step
        self.decoders: Dict[Tuple[str, bytes], TransitionDecoder] = {}
        self.expected = expected
        self.error: Optional[str] = None   # why ingestion or training stopped
        self.bad_events = 0  # episode/events messages that were not an actor's event

    # --- the executor thread: decode and queue, nothing that waits -----------------------------
    def on_transition(self, data: bytes, robot: str = '', publisher: bytes = b'') -> Optional[str]:
        """A transitions message of arm `robot` from `publisher` (its GID, where known),
        checked (shapes, finite values) and queued for storing; a warning to log, if any."""
        decoder = self.decoders.get((robot, publisher))
        if decoder is None:
            decoder = self.decoders[robot, publisher] = TransitionDecoder(self.expected)
        try:
            transition, header = decoder.decode(data)
        except MissingPreviousImage as exc:
            episode, step = exc.position[:2]
            self.learner.reject(f'image: {exc}', episode, step, robot)
            return f'transition dropped: {exc}'
        except InvalidTransition as exc:  # the message names the field
            self.learner.reject(str(exc))
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
            event = checked_end_event(text)
        except ValueError as exc:
            self.bad_events += 1
            return f'episode event ignored: {exc}'
        if event is None:
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
                  'bad_events': str(self.bad_events),
                  'out_of_order': str(sum(sequence.out_of_order
                                          for sequence in learner.sequences.values())),
                  'episodes': str(episodes), 'successes': str(successes),
                  'critic_updates_per_s': f'{learner.critic_updates_per_s:.3f}'}
        message = self.error or ('transitions lost' if lost else 'training')
        return line, DiagnosticEntry('sac_learner', level, message, values)
