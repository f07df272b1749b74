"""What a run directory remembers, without ROS or torch: the configuration it was started with,
its checkpoints and its episode numbering.

  <run_dir>/run_config.yaml            the run's TrainConfig (first line: its digest); a resume
                                       with a different configuration is refused
  <run_dir>/checkpoints/NNNNNN/        pretrained_model/config.json + weights, training_state/
  <run_dir>/checkpoints/last           name of the newest complete checkpoint
  <run_dir>/episodes/episode_NNNNNN/   one bag per episode (`_K` suffix only on a clash)
  <run_dir>/run.lock                   held by the one graph writing here
                                       (hilserl.common.run_lock)

The learner node and `hilserl train` both call `check_run_config` before anything starts, so a
changed YAML cannot silently continue a run it does not describe.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

from hilserl.configuration.config import ConfigError, TrainConfig, from_dict, save_config

RUN_CONFIG_NAME = 'run_config.yaml'
# Operational settings a resume may change: they decide where and how often things happen,
# not what is learned from what.
RESUMABLE_FIELDS = frozenset({'learner.device', 'learner.checkpoint_every_steps',
                              'learner.checkpoint_every_s', 'learner.weight_push_period_s',
                              'learner.keep_last_checkpoints', 'task.eval_random_ee_reset'})
_EPISODE_DIR = re.compile(r'^episode_(\d+)(?:_\d+)?$')


class RunConfigMismatch(ConfigError):
    """The run directory was started with another configuration."""


# Checkpoints written before the optimiser and RNG state became safetensors + JSON kept them in
# this pickle; it is never loaded as such (`hilserl convert-checkpoint` rewrites it once).
LEGACY_OPTIMIZERS_FILE = 'optimizers.pt'


class LegacyCheckpoint(ValueError):
    """A checkpoint still in the old pickled format, or one that cannot be converted."""


# --- configuration ---------------------------------------------------------------------------

def config_differences(old: dict, new: dict, prefix: str = '') -> List[str]:
    """Dotted paths of the fields that differ between two nested config dicts (lists compared
    whole; a key present on one side only differs)."""
    paths = []
    for key in sorted(set(old) | set(new), key=str):
        path = f'{prefix}.{key}' if prefix else str(key)
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += config_differences(a, b, path)
        elif _plain(a) != _plain(b):
            paths.append(path)
    return paths


_MISSING = object()


def _plain(value):
    """Tuples and lists compare equal (YAML and JSON give lists, dataclasses tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _resolved(data: dict) -> dict:
    """A stored config dict with today's defaults filled in (a field added since the run
    started is not a difference); as stored when it no longer loads."""
    try:
        return from_dict(TrainConfig, data).to_dict()
    except (ConfigError, TypeError):
        return data


def stored_run_config(run_dir) -> Tuple[Optional[dict], Optional[Path]]:
    """(config dict, where it came from): run_config.yaml, else the newest checkpoint's config
    (runs started before run_config.yaml existed), else (None, None) for a fresh run."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG_NAME
    if path.is_file():
        with open(path) as f:
            return (yaml.safe_load(f) or {}), path
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        path = checkpoint / 'pretrained_model' / 'config.json'
        return json.loads(path.read_text())['train_config'], path
    return None, None


def check_run_config(run_dir, cfg: TrainConfig) -> Optional[Path]:
    """Raise RunConfigMismatch (one line naming the differing fields) when `run_dir` was started
    with a different configuration; returns the file compared against (None: a fresh run)."""
    stored, source = stored_run_config(run_dir)
    if stored is None:
        return None
    differing = [p for p in config_differences(_resolved(stored), cfg.to_dict())
                 if p not in RESUMABLE_FIELDS]
    if differing:
        raise RunConfigMismatch(
            f'run directory {run_dir} was started with a different configuration ({source}); '
            f'differing fields: {", ".join(differing)}. Resume with that configuration '
            f'(--config {Path(run_dir) / RUN_CONFIG_NAME}) or choose a new run directory')
    return source


def record_run_config(run_dir, cfg: TrainConfig) -> Path:
    """Check (see check_run_config), then write run_config.yaml if the run has none yet."""
    check_run_config(run_dir, cfg)
    path = Path(run_dir) / RUN_CONFIG_NAME
    if not path.is_file():
        save_config(cfg, path)
        text = path.read_text()
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(f'# hilserl run configuration, digest {cfg.digest()}\n{text}')
        tmp.replace(path)
    return path


# --- checkpoints -----------------------------------------------------------------------------

def latest_checkpoint(run_dir) -> Optional[Path]:
    root = Path(run_dir) / 'checkpoints'
    marker = root / 'last'
    if marker.is_file():
        path = root / marker.read_text().strip()
        if (path / 'pretrained_model' / 'model.safetensors').is_file():
            return path
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def complete_checkpoints(run_dir) -> List[Path]:
    """The run's complete checkpoints (weights written, not a `.tmp`), oldest first."""
    root = Path(run_dir) / 'checkpoints'
    return sorted(p for p in root.glob('[0-9]*') if p.is_dir() and not p.name.endswith('.tmp')
                  and (p / 'pretrained_model' / 'model.safetensors').is_file())


def legacy_checkpoint_error(checkpoint) -> LegacyCheckpoint:
    """The one-line refusal of a checkpoint whose training state is still the old pickle."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == 'checkpoints' else checkpoint
    return LegacyCheckpoint(
        f'checkpoint {checkpoint} keeps its optimiser and RNG state in the old pickle format '
        f'(training_state/{LEGACY_OPTIMIZERS_FILE}), which is never loaded as it is: convert the '
        f'run once with `hilserl convert-checkpoint {run_dir}`')


def check_latest_checkpoint_format(run_dir) -> None:
    """Refuse (LegacyCheckpoint) a run whose newest checkpoint, the one a resume loads, still
    has the old pickled training state: before any node starts."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and \
            (checkpoint / 'training_state' / LEGACY_OPTIMIZERS_FILE).is_file():
        raise legacy_checkpoint_error(checkpoint)


def disk_usage_bytes(path) -> int:
    """Bytes the files under `path` occupy on disk (allocated blocks: sparse files count what
    they use); 0 when it does not exist. Unnamed temporary files (the replay image store) are
    not in any directory and not counted."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except OSError:  # deleted meanwhile
                continue
            blocks = getattr(stat, 'st_blocks', None)  # absent on Windows
            total += stat.st_size if blocks is None else blocks * 512
    return total


def remove_stale_checkpoints(run_dir) -> List[Path]:
    """Delete what an interrupted save left (`NNNNNN.tmp` folders, the `last.tmp` marker); only
    the learner writes checkpoints, so at its start nothing else can be writing them."""
    root = Path(run_dir) / 'checkpoints'
    removed = sorted(root.glob('*.tmp')) if root.is_dir() else []
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def checkpoint_model_dir(path) -> Path:
    """A checkpoint directory (checkpoints/NNNNNN), its pretrained_model folder, the run's
    `checkpoints/last`, its `checkpoints/` folder or the run directory itself (both: the newest
    complete checkpoint) -> the pretrained_model folder. FileNotFoundError (one line, naming the
    checkpoints that do exist) when none holds a policy."""
    path = Path(path)
    if path.name == 'last' and path.is_file():  # the marker the learner rewrites at each save
        path = path.parent / path.read_text().strip()
    elif (path / 'checkpoints').is_dir() or (path.name == 'checkpoints' and path.is_dir()):
        latest = latest_checkpoint(path if (path / 'checkpoints').is_dir() else path.parent)
        path = latest if latest is not None else path
    for candidate in (path / 'pretrained_model', path):
        if (candidate / 'config.json').is_file() and \
                (candidate / 'model.safetensors').is_file():
            return candidate
    found = _checkpoints_near(path)
    listing = (f'; the checkpoints there: {", ".join(found)}' if found else '')
    if not path.exists():
        raise FileNotFoundError(f'checkpoint {path} does not exist{listing}')
    raise FileNotFoundError(f'{path} is not a policy checkpoint (no pretrained_model/config.json '
                            f'and model.safetensors){listing}')


def checkpoint_run_dir(model_dir, default='outputs/run') -> Path:
    """The run directory a checkpoint's pretrained_model folder lies in
    (RUN/checkpoints/NNNNNN/pretrained_model); `default` for a folder outside a run."""
    model_dir = Path(model_dir)
    if model_dir.parent.parent.name == 'checkpoints':
        return model_dir.parent.parent.parent
    return Path(default)


def _checkpoints_near(path: Path, shown: int = 5) -> List[str]:
    """The complete checkpoints of the run `path` lies in (or names), newest last, for an error
    message: the last `shown` and `.../checkpoints/last`."""
    for folder in (path, *path.parents[:3]):
        if (folder / 'checkpoints').is_dir():
            done = complete_checkpoints(folder)
            names = [str(p) for p in done[-shown:]]
            if done and (folder / 'checkpoints' / 'last').is_file():
                names.append(str(folder / 'checkpoints' / 'last'))
            return names
    return []


def load_checkpoint_config(path) -> Tuple[TrainConfig, Path]:
    """(TrainConfig the checkpoint was trained with, its config.json); the config.json is also a
    valid `config_file` for every node (load_train_config reads it)."""
    config_path = checkpoint_model_dir(path) / 'config.json'
    try:
        data = json.loads(config_path.read_text())
        cfg = from_dict(TrainConfig, data['train_config'], 'train_config')
    except (json.JSONDecodeError, KeyError) as exc:
        raise ConfigError(f'{config_path}: not a checkpoint config ({exc})') from None
    return cfg, config_path


# --- episodes --------------------------------------------------------------------------------

def episode_dir_name(index: int) -> str:
    return f'episode_{index:06d}'


def next_episode_index(run_dir) -> int:
    """1 + the highest episode_NNNNNN index under <run_dir>/episodes (0 if none): where a resumed
    actor continues its numbering, so no bag is written beside another of the same index."""
    root = Path(run_dir) / 'episodes'
    indices = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else ())
               if (m := _EPISODE_DIR.match(p.name))]
    return max(indices) + 1 if indices else 0
