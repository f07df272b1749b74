"""The learner's work without ROS: route transitions into the RLPD buffers, train, log metrics
to CSV, checkpoint and resume. `sac_learner_node` runs `Learner.train_step()` in a background
thread and feeds `add()` from the transitions topic.
"""
from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from hilserl.allocator import retain_freed_memory
from hilserl.config import TrainConfig
from hilserl_policy.checkpoint import build_agent, latest_checkpoint, resume, save_checkpoint
from hilserl_policy.replay import ReplayBuffer, Transition, sample_mixed


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
                 device: Optional[str] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        retain_freed_memory()  # batch tensors reuse freed memory: no page faults per update
        image_hw = tuple(cfg.image.resize_hw_px)
        image_shape = (3 * cfg.observation.n_obs_steps, *image_hw)
        self.online: Optional[ReplayBuffer] = None
        self.offline: Optional[ReplayBuffer] = None
        self.resumed_from = None
        checkpoint = latest_checkpoint(self.run_dir) if resume_from_latest else None
        image_dir = (self.run_dir / 'replay' if cfg.sac.replay_image_storage == 'file'
                     else None)
        if checkpoint is not None:
            self.agent, _, self.online, self.offline, _ = resume(checkpoint, device, image_dir)
            self.resumed_from = checkpoint
        else:
            self.agent = build_agent(cfg, image_hw, device)
        s, a = cfg.observation.state_dim, cfg.action.dim
        featurizer = self.agent.featurize if cfg.sac.feature_cache_shifts else None
        self.online = self.online or ReplayBuffer(cfg.sac.online_buffer_capacity, image_shape,
                                                  s, a, featurizer, image_dir)
        self.offline = self.offline or ReplayBuffer(cfg.sac.offline_buffer_capacity,
                                                    image_shape, s, a, featurizer, image_dir)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.metrics_log = MetricsLog(self.run_dir / 'metrics.csv')
        self.lock = threading.Lock()  # agent parameters: update vs. weight export/checkpoint
        self.last_metrics: Dict[str, float] = {}
        self.rejected = 0
        self._update_times = []

    # --- data ---------------------------------------------------------------------------------
    def add(self, t: Transition, demo: bool = False) -> bool:
        """Online transitions go to the online buffer; human interventions and demos also (or
        only, for demos) to the offline buffer. Invalid ones are counted and dropped."""
        try:
            if not demo:
                self.online.add(t)
            if demo or t.intervention:
                self.offline.add(t)
        except ValueError:
            self.rejected += 1
            return False
        return True

    def ready(self) -> bool:
        return len(self.online) + len(self.offline) >= max(self.cfg.sac.learning_starts, 1)

    def sample(self):
        return sample_mixed(self.online, self.offline, self.cfg.sac.batch_size,
                            self.cfg.sac.online_ratio, self.rng)

    # --- training -----------------------------------------------------------------------------
    def train_step(self) -> Dict[str, float]:
        started = time.perf_counter()
        with self.lock:
            metrics = self.agent.update(self.sample)
        elapsed = time.perf_counter() - started
        self._update_times = (self._update_times + [elapsed])[-20:]
        metrics.update(step_time_s=elapsed, online_size=len(self.online),
                       offline_size=len(self.offline), wall_time=time.time())
        self.last_metrics = metrics
        self.metrics_log.write(metrics)
        if self.agent.step % self.cfg.sac.checkpoint_every_steps == 0:
            self.checkpoint()
        return metrics

    @property
    def critic_updates_per_s(self) -> float:
        if not self._update_times:
            return 0.0
        return self.cfg.sac.utd_ratio * len(self._update_times) / sum(self._update_times)

    def checkpoint(self) -> Path:
        with self.lock:
            return save_checkpoint(self.run_dir, self.agent, self.cfg, self.online, self.offline,
                                   {'rejected_transitions': self.rejected})

    def policy_weights(self):
        with self.lock:
            state = self.agent.policy_state()
            meta = {'step': self.agent.step}
            if self.cfg.sac.freeze_encoder:  # not sent: the actor must hold the same one
                meta['backbone_digest'] = self.agent.backbone_digest()
            return state, meta
