"""The learner's work without ROS: route transitions into the RLPD buffers, train, log metrics
to CSV, checkpoint and resume. `sac_learner_node` feeds `submit()` from the transitions topic
(never blocks), stores them with `store_next()` on a thread of its own and runs `train_step()`
on another, so ingestion never waits for an update or a checkpoint.
"""
from __future__ import annotations

import csv
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from hilserl.learning.allocator import retain_freed_memory
from hilserl.configuration.config import TrainConfig
from hilserl.configuration.run_dir import remove_stale_checkpoints
from hilserl.data.transition import Transition
from hilserl_policy.checkpoint import (build_agent, latest_checkpoint, prune_checkpoints,
                                       resume, save_checkpoint)
from hilserl_policy.metrics import TrainingMetrics
from hilserl_policy.replay_buffer import ReplayBuffer, sample_mixed

EPISODE_KEYS = ('episode', 'success', 'steps', 'return', 'interventions', 'outcome', 'robot')
# Transitions that queued up are stored together: a frozen encoder filling the feature cache
# costs several times less per image in one batch than image by image (GroupNorm ResNet-10 at
# 128x128 on 2 CPU threads: ~12 ms per image at 32-64, 35-40 ms alone).
STORE_BATCH = 32


def recent_summary(episodes: List[dict]) -> str:
    if not episodes:
        return 'no episodes yet'
    n = len(episodes)
    success = sum(bool(e.get('success')) for e in episodes) / n
    unaided = sum(bool(e.get('success')) and not e.get('interventions') for e in episodes) / n
    steps = sum(int(e.get('steps', 0)) for e in episodes)
    human = sum(int(e.get('interventions', 0)) for e in episodes) / steps if steps else 0.0
    return (f'last {n}: {success:.0%} success, {unaided:.0%} without help, human drove '
            f'{human:.0%} of steps')


def torch_threads(requested: int) -> int:
    """Torch CPU threads for training: `requested`, or for 0 every core but one (the actor,
    driver and camera share that one)."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 1) - 1)


class SequenceTracker:
    """Transitions carry (episode, step), steps 1, 2, ... within an episode (the actor's count).
    A step that skips ahead, an episode that starts late, or an episode whose `end` event counts
    more steps than arrived means transitions were lost on the way: `missing` counts them."""

    def __init__(self):
        self.missing = 0
        self.out_of_order = 0
        self.episode: Optional[int] = None
        self.last_step = 0
        self._end_steps: Optional[int] = None    # the current episode's end event, if seen
        self._closed: Optional[Tuple[int, int]] = None  # (episode, last step) of the previous

    def observe(self, episode: int, step: int) -> int:
        """One arriving transition; returns how many went missing just before it."""
        if episode < 0 or step < 0:  # sent without a header position: nothing to check
            return 0
        missing = 0
        if episode != self.episode:
            missing += self._close_episode()
            self.episode, self.last_step, self._end_steps = episode, 0, None
        if step <= self.last_step:
            self.out_of_order += 1
        else:
            missing += step - self.last_step - 1
            self.last_step = step
        self.missing += missing
        return missing

    def episode_ended(self, episode: int, steps: int) -> int:
        """The actor's `end` event (its step count); returns transitions found missing."""
        if episode == self.episode:
            self._end_steps = steps  # the last transitions may still be on their way
            return 0
        if self._closed is not None and self._closed[0] == episode:
            missing = max(0, steps - self._closed[1])
            self._closed = None
            self.missing += missing
            return missing
        return 0

    def _close_episode(self) -> int:
        if self.episode is None:
            return 0
        if self._end_steps is None:  # its end event comes later: episode_ended checks
            self._closed = (self.episode, self.last_step)
            return 0
        self._closed = None
        return max(0, self._end_steps - self.last_step)


class MetricsLog:
    """Append-only CSV; new columns are added by rewriting the header once (rare)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields = None
        if self.path.is_file():
            with open(self.path) as f:
                header = f.readline().strip()
            self.fields = header.split(',') if header else None

    def write(self, row: Dict) -> None:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        if self.fields is None or set(row) - set(self.fields):
            old = []
            if self.fields is not None:
                with open(self.path) as f:
                    old = list(csv.DictReader(f))
            self.fields = list(dict.fromkeys((self.fields or []) + list(row)))
            with open(self.path, 'w', newline='') as f:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(old)
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, self.fields).writerow(row)


class Learner:
    def __init__(self, cfg: TrainConfig, run_dir, resume_from_latest: bool = True,
                 device: Optional[str] = None, wandb: bool = False):
        """`wandb`: the metrics also go to a Weights & Biases run (offline unless WANDB_MODE
        says otherwise) under run_dir/wandb; raises OptionalPackageMissing without the package."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # this configuration's device, also on resume (a checkpoint may have been written on
        # another machine: learner.device is one of the fields a resume may change)
        device = device or cfg.learner.device
        retain_freed_memory()  # batch tensors reuse freed memory: no page faults per update
        remove_stale_checkpoints(self.run_dir)  # an interrupted save's leftovers
        image_shape = cfg.image_shape()
        self.online: Optional[ReplayBuffer] = None
        self.offline: Optional[ReplayBuffer] = None
        self.resumed_from = None
        checkpoint = latest_checkpoint(self.run_dir) if resume_from_latest else None
        image_dir = (self.run_dir / 'replay' if cfg.replay.replay_image_storage == 'file'
                     else None)
        state = {}
        if checkpoint is not None:
            self.agent, _, self.online, self.offline, state = resume(checkpoint, device,
                                                                     image_dir)
            self.resumed_from = checkpoint
        else:
            self.agent = build_agent(cfg, device=device)
        s, a = cfg.observation.state_dim, cfg.action.dim
        featurizer = self.agent.featurize if cfg.algorithm.feature_cache_shifts else None
        self.online = self.online or ReplayBuffer(cfg.replay.online_buffer_capacity, image_shape,
                                                  s, a, featurizer, image_dir)
        self.offline = self.offline or ReplayBuffer(cfg.replay.offline_buffer_capacity,
                                                    image_shape, s, a, featurizer, image_dir)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.metrics_log = MetricsLog(self.run_dir / 'metrics.csv')
        self.training_metrics = TrainingMetrics.for_run(self.run_dir, cfg.algorithm.utd_ratio,
                                                        wandb, cfg.to_dict())
        self.lock = threading.Lock()  # agent parameters: update vs. weight export/checkpoint
        self.last_metrics: Dict[str, float] = {}
        self._update_times = []
        # Counters that continue across resumes (restored from the checkpoint's state.json).
        self.rejected = int(state.get('rejected_transitions', 0))
        self.counts = {'received': 0, 'stored': 0, 'dropped': 0, 'missing': 0,
                       **state.get('transitions', {})}
        self.drop_reasons = Counter(state.get('drop_reasons', {}))
        self.episodes: List[dict] = list(state.get('episodes', []))
        self.sequences: Dict[str, SequenceTracker] = {}  # one per arm (its namespace)
        self._incoming: queue.Queue = queue.Queue()  # unbounded: a put never waits
        self._in_hand = 0  # taken from the queue, being stored
        self.last_checkpoint_s = time.monotonic()
        self._checkpointed = self._progress_key()
        self.checkpoints_deleted = 0  # by learner.keep_last_checkpoints, in this process
        self.log: Callable[[str], None] = lambda message: None  # the node's logger

    # --- data ---------------------------------------------------------------------------------
    def add(self, t: Transition, demo: bool = False) -> bool:
        """Online transitions go to the online buffer; human interventions and demos also (or
        only, for demos) to the offline buffer. Invalid ones are counted and dropped."""
        return self._add(t, demo) is None

    def add_many(self, transitions: Iterable[Transition], demo: bool = False) -> int:
        """`add` for many (demonstrations at start-up), featurized in batches; returns how many
        were stored."""
        stored, chunk = 0, []
        for t in transitions:
            chunk.append(t)
            if len(chunk) == STORE_BATCH:
                stored += self._add_batch(chunk, demo).count(None)
                chunk = []
        return stored + self._add_batch(chunk, demo).count(None)

    def _add_batch(self, transitions: List[Transition], demo: bool = False
                   ) -> List[Optional[str]]:
        """`_add` for each; the frozen encoder's features of all valid images in one call."""
        features: List[Optional[np.ndarray]] = [None] * len(transitions)
        featurizer = self.online.featurizer
        if featurizer is not None and transitions:
            valid = []
            for k, t in enumerate(transitions):
                try:
                    t.validate(self.online.image_shape, self.online.state_dim,
                               self.online.action_dim)
                    valid.append(k)
                except ValueError:
                    pass  # refused (and counted) by _add, with the reason
            if valid:
                batch = featurizer(np.stack([transitions[k].image for k in valid]))
                for k, row in zip(valid, batch):
                    features[k] = row
        return [self._add(t, demo, f) for t, f in zip(transitions, features)]

    def _add(self, t: Transition, demo: bool = False,
             features: Optional[np.ndarray] = None) -> Optional[str]:
        """None when stored, else why not. `features`: the cache entry of t.image, if known
        (computed once for both buffers)."""
        try:
            if not demo:
                self.online.add(t, features)
            if demo or t.intervention:
                self.offline.add(t, features)
        except ValueError as exc:  # shape, NaN or range: the message names the field
            self.rejected += 1
            return str(exc)
        except OSError as exc:  # the replay image file failed (e.g. a full disk)
            self.rejected += 1
            return f'storage: {exc}'
        return None

    def sequence(self, robot: str = '') -> SequenceTracker:
        """The (episode, step) sequence of one arm's actor (several arms number alike)."""
        return self.sequences.setdefault(robot, SequenceTracker())

    def submit(self, t: Transition, episode: int = -1, step: int = -1, robot: str = '') -> int:
        """A transition from the actor of arm `robot`, in arrival order: queued for
        `store_next` (never waits for the buffers, an update or a checkpoint). Returns how many
        transitions that arm's (episode, step) sequence shows went missing just before this."""
        self.counts['received'] += 1
        missing = self.sequence(robot).observe(episode, step)
        self.counts['missing'] += missing
        self._incoming.put(t)
        return missing

    def reject(self, reason: str, episode: int = -1, step: int = -1, robot: str = '') -> int:
        """A message that arrived but gives no transition (undecodable, or its image was left
        out and the step before it was lost): dropped, and its (episode, step), where known,
        taken into arm `robot`'s sequence. Returns how many went missing just before it."""
        self.counts['received'] += 1
        self._drop(reason)
        missing = self.sequence(robot).observe(episode, step)
        self.counts['missing'] += missing
        return missing

    def _drop(self, reason: str) -> None:
        self.counts['dropped'] += 1
        self.drop_reasons[reason.split(' ', 1)[0].rstrip(':')] += 1  # the field, not its value

    def store_next(self, timeout_s: float = 0.2, max_batch: int = STORE_BATCH
                   ) -> Optional[List[Tuple[bool, str]]]:
        """Store the oldest submitted transition and those queued behind it (up to
        `max_batch`, in order): one (True, '') or (False, why it was dropped) each; None when
        nothing arrived within `timeout_s`. The buffer lock it takes is held by an update only
        while a batch is copied (a checkpoint holds it longer: the queue waits)."""
        try:
            batch = [self._incoming.get(timeout=timeout_s) if timeout_s > 0 else
                     self._incoming.get_nowait()]
        except queue.Empty:
            return None
        while len(batch) < max_batch:
            try:
                batch.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        self._in_hand = len(batch)
        try:
            reasons = self._add_batch(batch)
        finally:
            self._in_hand = 0
        results = []
        for reason in reasons:
            if reason is None:
                self.counts['stored'] += 1
                results.append((True, ''))
            else:
                self._drop(reason)
                results.append((False, reason))
        return results

    @property
    def pending(self) -> int:
        """Submitted, not yet stored or dropped."""
        return self._incoming.qsize() + self._in_hand

    def episode_ended(self, event: dict, robot: str = '') -> int:
        """The `end` event of arm `robot`'s actor: counted, and checked against the
        transitions that arrived; returns how many of that episode's transitions are missing."""
        self.record_episode({**event, 'robot': robot} if robot else event)
        missing = self.sequence(robot).episode_ended(int(event.get('episode', -1)),
                                                     int(event.get('steps', -1)))
        self.counts['missing'] += missing
        return missing

    def record_episode(self, event: dict) -> None:
        self.episodes.append({k: event[k] for k in EPISODE_KEYS if k in event})
        self.training_metrics.episode(len(self.episodes) - 1, self.episodes[-1],
                                      self.episodes[-10:])

    def episode_counts(self) -> Tuple[int, int]:
        """(episodes, successful episodes) over the whole run, resumes included."""
        return len(self.episodes), sum(bool(e.get('success')) for e in self.episodes)

    def recent_summary(self, window: int = 10) -> str:
        """The last `window` episodes in words: success, success without any human step, and
        the share of steps the human drove. With a helping human success is near 100 % from the
        start; the other two show the policy taking over."""
        return recent_summary(self.episodes[-window:])

    def ready(self) -> bool:
        return len(self.online) + len(self.offline) >= max(self.cfg.learner.learning_starts, 1)

    def sample(self):
        return sample_mixed(self.online, self.offline, self.cfg.algorithm.batch_size,
                            self.cfg.replay.online_ratio, self.rng)

    # --- training -----------------------------------------------------------------------------
    def train_step(self, should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
        started = time.perf_counter()
        with self.lock:
            metrics = self.agent.update(self.sample, should_stop)
        if metrics.get('interrupted'):
            return metrics
        elapsed = time.perf_counter() - started
        self._update_times = (self._update_times + [elapsed])[-20:]
        metrics.update(step_time_s=elapsed, online_size=len(self.online),
                       offline_size=len(self.offline), wall_time=time.time())
        self.last_metrics = metrics
        self.metrics_log.write(metrics)
        self.training_metrics.train(metrics)
        if self.agent.step % self.cfg.learner.checkpoint_every_steps == 0:
            self.checkpoint()
        else:
            self.maybe_checkpoint()
        return metrics

    @property
    def critic_updates_per_s(self) -> float:
        if not self._update_times:
            return 0.0
        return self.cfg.algorithm.utd_ratio * len(self._update_times) / sum(self._update_times)

    def _progress_key(self):
        return (self.agent.step, self.online.total_added, self.offline.total_added,
                len(self.episodes))

    def maybe_checkpoint(self, now_s: Optional[float] = None) -> Optional[Path]:
        """Checkpoint when learner.checkpoint_every_s has passed since the last one and anything
        changed (steps, stored transitions, episodes); also before learning starts, so an early
        crash keeps the buffers."""
        now_s = time.monotonic() if now_s is None else now_s
        if now_s - self.last_checkpoint_s < self.cfg.learner.checkpoint_every_s or \
                self._progress_key() == self._checkpointed:
            return None
        return self.checkpoint(now_s)

    def checkpoint(self, now_s: Optional[float] = None) -> Path:
        with self.lock:
            self._checkpointed = self._progress_key()
            path = save_checkpoint(self.run_dir, self.agent, self.cfg, self.online,
                                   self.offline, {
                                       'rejected_transitions': self.rejected,
                                       'transitions': dict(self.counts),
                                       'drop_reasons': dict(self.drop_reasons),
                                       'episodes': list(self.episodes)})
            in_use = [buffer.segment_dir / seg['file'] for buffer in (self.online, self.offline)
                      for seg in buffer.segments]
            deleted = prune_checkpoints(self.run_dir, self.cfg.learner.keep_last_checkpoints,
                                        [self.resumed_from] if self.resumed_from else [],
                                        in_use)
        self.checkpoints_deleted += len(deleted)
        if deleted:
            self.log(f'checkpoint {path.name} saved; deleted {len(deleted)} older '
                     f'({", ".join(p.name for p in deleted)}; keep_last_checkpoints '
                     f'{self.cfg.learner.keep_last_checkpoints}, {self.checkpoints_deleted} '
                     'deleted so far)')
        self.last_checkpoint_s = time.monotonic() if now_s is None else now_s
        return path

    def policy_weights(self):
        with self.lock:
            state = self.agent.policy_state()
            meta = {'step': self.agent.step}
            if self.cfg.policy.freeze_encoder:  # not sent: the actor must hold the same one
                meta['backbone_digest'] = self.agent.backbone_digest()
            return state, meta
