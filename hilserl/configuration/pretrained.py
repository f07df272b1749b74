"""Where pretrained encoder weights come from (torch-free): a local directory holding
config.json + model.safetensors, or a Hugging Face repo id (`helper2424/resnet10`, the seed's
ResNet-10) found in the local Hugging Face cache. Nothing is downloaded except by
`fetch_encoder` (the `hilserl fetch-encoder` command), never while a graph starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

DEFAULT_REPO = 'helper2424/resnet10'
WEIGHTS_FILE = 'model.safetensors'


class PretrainedWeightsMissing(FileNotFoundError):
    """The pretrained encoder weights a configuration names are not on this machine."""


def frozen_without_weights_message(owner: str = 'sac') -> str:
    """One line for a frozen encoder without pretrained weights (it would stay random)."""
    return (f'{owner}.freeze_encoder is true but {owner}.pretrained_encoder_path is not set: a '
            'frozen encoder would keep random weights. Set pretrained_encoder_path (a local '
            f'directory with config.json + {WEIGHTS_FILE}, or {DEFAULT_REPO} once in the '
            f'Hugging Face cache: hilserl fetch-encoder {DEFAULT_REPO}), or set '
            'freeze_encoder: false to train the encoder')


def hub_cache_dirs() -> List[Path]:
    """The Hugging Face hub caches this machine may hold, most specific first."""
    dirs = [os.environ.get('HF_HUB_CACHE'), os.environ.get('HUGGINGFACE_HUB_CACHE')]
    if os.environ.get('HF_HOME'):
        dirs.append(str(Path(os.environ['HF_HOME']) / 'hub'))
    if os.environ.get('XDG_CACHE_HOME'):
        dirs.append(str(Path(os.environ['XDG_CACHE_HOME']) / 'huggingface' / 'hub'))
    dirs.append(str(Path.home() / '.cache' / 'huggingface' / 'hub'))
    return list(dict.fromkeys(Path(d).expanduser() for d in dirs if d))


def _is_repo_id(text: str) -> bool:
    parts = text.split('/')
    return (len(parts) == 2 and all(parts) and not text.startswith(('.', '~'))
            and all(not p.startswith('.') for p in parts))


def _cached_snapshot(repo_id: str, cache: Path) -> Optional[Path]:
    """The repo's snapshot in one hub cache: the one refs/main names, else the newest one
    that holds the weights."""
    root = cache / ('models--' + repo_id.replace('/', '--'))
    ref = root / 'refs' / 'main'
    if ref.is_file():
        snapshot = root / 'snapshots' / ref.read_text().strip()
        if (snapshot / WEIGHTS_FILE).is_file():
            return snapshot
    snapshots = [s for s in (root / 'snapshots').glob('*') if (s / WEIGHTS_FILE).is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None


def resolve_pretrained_dir(path: str) -> Path:
    """`pretrained_encoder_path` -> the directory holding its model.safetensors: the path
    itself, or a repo id's snapshot in the local Hugging Face cache. Raises
    PretrainedWeightsMissing (one line, saying how to get the weights) otherwise."""
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / WEIGHTS_FILE).is_file():
            return local
        raise PretrainedWeightsMissing(
            f'pretrained encoder directory {local} holds no {WEIGHTS_FILE} (it needs '
            f'config.json + {WEIGHTS_FILE}, e.g. hilserl fetch-encoder {DEFAULT_REPO} '
            f'--local-dir {local})')
    caches = hub_cache_dirs()
    if _is_repo_id(str(path)):
        for cache in caches:
            snapshot = _cached_snapshot(str(path), cache)
            if snapshot is not None:
                return snapshot
        raise PretrainedWeightsMissing(
            f'pretrained encoder {path} is not in the local Hugging Face cache '
            f'({", ".join(map(str, caches))}) and is not a directory: download it once where '
            f'you are online (hilserl fetch-encoder {path}), or set pretrained_encoder_path '
            f'to a directory with config.json + {WEIGHTS_FILE}, or train the encoder from '
            'scratch (freeze_encoder: false, pretrained_encoder_path: null)')
    raise PretrainedWeightsMissing(
        f'pretrained encoder directory {local} does not exist (get the weights with '
        f'hilserl fetch-encoder {DEFAULT_REPO} --local-dir {local}, or name the repo id '
        f'{DEFAULT_REPO} once it is in the Hugging Face cache; or train the encoder from '
        'scratch: freeze_encoder: false, pretrained_encoder_path: null)')


def check_encoder_weights(policy) -> Optional[Path]:
    """Before any node starts: the pretrained encoder a SAC configuration names is on this
    machine (None when it names none: a trained encoder)."""
    if not policy.pretrained_encoder_path:
        return None
    return resolve_pretrained_dir(policy.pretrained_encoder_path)


class EncoderFetchFailed(OSError):
    """The hub could not be reached or refused the download (one line: why, and what to do)."""


def fetch_encoder(repo_id: str = DEFAULT_REPO, local_dir: Optional[str] = None) -> Path:
    """Download a pretrained encoder's config.json + model.safetensors from the Hugging Face hub
    into the local hub cache (or `local_dir`), where `resolve_pretrained_dir` finds it. A repo
    already in the cache is not fetched again. Returns the directory holding the weights."""
    if local_dir is None and _is_repo_id(repo_id):
        for cache in hub_cache_dirs():
            snapshot = _cached_snapshot(repo_id, cache)
            if snapshot is not None:
                return snapshot
    if not _is_repo_id(repo_id):
        raise EncoderFetchFailed(f'{repo_id!r} is not a Hugging Face repo id (owner/name)')
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise EncoderFetchFailed('huggingface_hub is not installed: run make setup') from None
    try:
        folder = snapshot_download(repo_id, allow_patterns=['config.json', WEIGHTS_FILE],
                                   local_dir=local_dir)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, refused: say it in one line
        reason = ' '.join(str(exc).split())[:200] or type(exc).__name__
        raise EncoderFetchFailed(
            f'cannot download {repo_id} from the Hugging Face hub (offline? {reason}); where you '
            f'are online run hilserl fetch-encoder {repo_id} and copy the hub cache '
            f'({hub_cache_dirs()[0]}) here, or a directory with config.json + {WEIGHTS_FILE}') \
            from None
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise EncoderFetchFailed(f'{repo_id} has no {WEIGHTS_FILE}: not an encoder checkpoint')
    return folder
