"""Where the learner's metrics go: TensorBoard event files and, when asked for (`--wandb`,
`wandb:=true`), a Weights & Biases run. `TrainingMetrics` computes each scalar once and hands
the same values to every sink, so the two never disagree.

W&B is imported only when a run is asked for. It runs offline unless WANDB_MODE says otherwise
(no account, no network; `wandb sync` uploads later): the run directory is
`<directory>/wandb/offline-run-*`.
"""
from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.common.optional_packages import require_wandb

# (name, value) of the x axis a group of scalars is plotted against: optimisation step for
# train/*, episode number for episode/*
Axis = Tuple[str, int]
WANDB_PROJECT = 'hilserl'
_RUN_ID_FILE = 'hilserl_run_id'  # a resumed training run continues the same W&B run


class TensorBoardSink:
    """Scalars as event files for `tensorboard --logdir RUN_DIR`. Raises ImportError without
    the tensorboard package."""

    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir), flush_secs=10)

    def scalars(self, values: Dict[str, float], axis: Axis,
                wall_time: Optional[float] = None) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, axis[1], walltime=wall_time)

    def video(self, key: str, path: Path, axis: Axis) -> None:
        """Event files hold frames, not MP4 files: videos stay beside them on disk."""

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run under `directory`/wandb. Each group of scalars (train/*, episode/*) is plotted
    against its own axis (define_metric), as in TensorBoard: W&B's single `step` must only grow,
    and optimisation steps and episode numbers do not grow together."""

    def __init__(self, directory, job_type: str, name: str = '', config: Optional[dict] = None,
                 resume: bool = False, asked_by: str = '--wandb'):
        wandb = require_wandb(asked_by)
        self._wandb = wandb
        directory = Path(directory)
        (directory / 'wandb').mkdir(parents=True, exist_ok=True)
        run_id = self._run_id(directory / 'wandb' / _RUN_ID_FILE) if resume else None
        self.mode = os.environ.get('WANDB_MODE') or 'offline'
        # console off: W&B would otherwise wrap stdout, which carries the node's log lines
        settings = wandb.Settings(silent=True, console='off', x_disable_stats=True,
                                  disable_git=True, save_code=False)
        self.run = wandb.init(dir=str(directory), project=os.environ.get('WANDB_PROJECT') or
                              WANDB_PROJECT, name=name or directory.name, job_type=job_type,
                              config=config, id=run_id, resume='allow' if run_id else None,
                              mode=self.mode, settings=settings)
        self._axes = set()

    @staticmethod
    def _run_id(path: Path) -> str:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = secrets.token_hex(4)
        path.write_text(run_id + '\n')
        return run_id

    @property
    def location(self) -> Path:
        """This run's own directory (offline-run-... or run-...)."""
        return Path(self.run.dir).parent

    def _axis(self, axis: Axis) -> None:
        if axis[0] not in self._axes:
            self.run.define_metric(axis[0])
            self.run.define_metric(axis[0].split('/')[0] + '/*', step_metric=axis[0])
            self._axes.add(axis[0])

    def scalars(self, values: Dict[str, float], axis: Axis,
                wall_time: Optional[float] = None) -> None:
        self._axis(axis)
        self.run.log({**values, axis[0]: axis[1]})

    def video(self, key: str, path: Path, axis: Axis) -> None:
        self._axis(axis)
        self.run.log({key: self._wandb.Video(str(path), format=Path(path).suffix.lstrip('.')),
                      axis[0]: axis[1]})

    def close(self) -> None:
        self.run.finish()
        # finish() returns before W&B's service has written the run's last records; teardown
        # waits for it, so the run is complete on disk when the node's process ends
        self._wandb.teardown()


class TrainingMetrics:
    """The learner's scalars, the same to every sink: train/* by optimisation step and
    episode/* (success, return, steps, intervention rate, success of the last 10) by episode
    number. Called from the update thread and the executor's: one sink call at a time."""

    def __init__(self, sinks: Sequence, utd_ratio: int, unavailable: str = ''):
        self.sinks = list(sinks)
        self.utd_ratio = utd_ratio
        self.unavailable = unavailable  # why there are no TensorBoard event files, if none
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, run_dir, utd_ratio: int, wandb: bool = False,
                config: Optional[dict] = None) -> 'TrainingMetrics':
        """TensorBoard under run_dir/tensorboard (where the package is installed) and, with
        `wandb`, the run's W&B run, continued on resume. Raises OptionalPackageMissing."""
        run_dir = Path(run_dir)
        sinks: List = []
        unavailable = ''
        try:
            sinks.append(TensorBoardSink(run_dir / 'tensorboard'))
        except ImportError as exc:  # a distro install without `pip install tensorboard`
            unavailable = str(exc)
        if wandb:
            sinks.append(WandbSink(run_dir, 'train', config=config, resume=True,
                                   asked_by='wandb (--wandb, wandb:=true)'))
        return cls(sinks, utd_ratio, unavailable)

    @property
    def wandb_location(self) -> Optional[Path]:
        return next((s.location for s in self.sinks if isinstance(s, WandbSink)), None)

    def scalars(self, values: Dict[str, float], axis: Axis,
                wall_time: Optional[float] = None) -> None:
        with self._lock:
            for sink in self.sinks:
                sink.scalars(values, axis, wall_time)

    def train(self, metrics: Dict[str, float]) -> None:
        step = int(metrics.get('step', 0))
        values = {f'train/{key}': float(value) for key, value in metrics.items()
                  if key not in ('step', 'wall_time') and isinstance(value, (int, float))
                  and np.isfinite(value)}
        if metrics.get('step_time_s'):
            values['train/critic_updates_per_s'] = self.utd_ratio / metrics['step_time_s']
        self.scalars(values, ('train/step', step), metrics.get('wall_time'))

    def episode(self, number: int, episode: dict, recent: List[dict]) -> None:
        steps = max(int(episode.get('steps', 0)), 1)
        values = {'episode/success': float(bool(episode.get('success'))),
                  'episode/return': float(episode.get('return', 0.0)),
                  'episode/steps': float(episode.get('steps', 0)),
                  'episode/intervention_rate': float(episode.get('interventions', 0)) / steps,
                  'episode/success_rate_last_10': float(np.mean([bool(e.get('success'))
                                                                 for e in recent]))}
        self.scalars(values, ('episode/number', number))

    def video(self, key: str, path, axis: Axis) -> bool:
        """An episode's video file to every sink that keeps videos; False when it does not
        exist (nothing logged)."""
        path = Path(path)
        if not path.is_file():
            return False
        with self._lock:
            for sink in self.sinks:
                sink.video(key, path, axis)
        return True

    def close(self) -> None:
        with self._lock:
            for sink in self.sinks:
                sink.close()


def log_evaluation(directory, summary: dict, config: Optional[dict] = None) -> Tuple[Path, int]:
    """An evaluation (`hilserl eval --wandb`, its eval_summary.json) as a W&B run of its own
    under `directory` (the run's eval/ folder): each episode's success, return and steps by
    episode number, the totals, and each episode's video where its row names one that exists
    (`--video`). Returns (the W&B run's directory, videos logged). Raises
    OptionalPackageMissing."""
    sink = WandbSink(directory, 'eval', name=f'{Path(directory).resolve().parent.name}-eval',
                     config=config)
    metrics = TrainingMetrics([sink], utd_ratio=1)
    videos = 0
    try:
        for row in summary.get('rows', []):
            axis = ('eval/episode', int(row.get('episode', 0)))
            metrics.scalars({'eval/success': float(row.get('result') == 'SUCCESS'),
                             'eval/return': float(row.get('reward', 0.0)),
                             'eval/steps': float(row.get('steps', 0))}, axis)
            if row.get('video'):
                videos += metrics.video('eval/video', row['video'], axis)
        totals = {f'eval_summary/{key}': float(summary.get(key, 0.0))
                  for key in ('success_rate', 'mean_steps', 'mean_return')}
        metrics.scalars(totals, ('eval_summary/episodes', int(summary.get('episodes', 0))))
    finally:
        metrics.close()
    return sink.location, videos
