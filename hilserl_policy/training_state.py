"""Optimiser and RNG state of a checkpoint as safetensors + JSON, as LeRobot keeps them: nothing a
checkpoint holds is a pickle, so loading one never runs code from the file. (These files are
written inside the checkpoint's `.tmp` folder, which is renamed whole: no atomic write each.)

  training_state/optimizers/<name>/optimizer_state.safetensors   per-parameter tensors
                                                                  ("<param index>.<key>")
  training_state/optimizers/<name>/optimizer_param_groups.json   param groups, non-tensor state
  training_state/rng_state.safetensors                           torch generator state
  training_state/rng_state.json                                  numpy bit generator state

Checkpoints written before this kept these in a pickle (`training_state/optimizers.pt`);
`hilserl convert-checkpoint` rewrites them once, reading the old file with
`torch.load(weights_only=True)`: torch's restricted unpickler, which refuses any object other than
tensors and plain containers instead of building it.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import torch

from hilserl.configuration.run_dir import (LEGACY_OPTIMIZERS_FILE, LegacyCheckpoint,
                                           complete_checkpoints, legacy_checkpoint_error)

OPTIMIZERS_DIR = 'optimizers'
OPTIMIZER_STATE = 'optimizer_state.safetensors'
OPTIMIZER_PARAM_GROUPS = 'optimizer_param_groups.json'
RNG_TENSORS = 'rng_state.safetensors'
RNG_JSON = 'rng_state.json'


def write_optimizer_state(folder, state_dict: dict) -> None:
    """An optimizer's `state_dict()` as its tensors (safetensors) and the rest (JSON)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {}
    other: Dict[str, object] = {}
    for index, entries in state_dict['state'].items():
        for key, value in entries.items():
            name = f'{int(index)}.{key}'
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                other[name] = value
    save_file(tensors, str(folder / OPTIMIZER_STATE))
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in state_dict['param_groups']]
    (folder / OPTIMIZER_PARAM_GROUPS).write_text(
        json.dumps({'param_groups': groups, 'state': other}, indent=1))


def read_optimizer_state(folder, optimizer: torch.optim.Optimizer) -> dict:
    """The state dict `write_optimizer_state` wrote, for `optimizer.load_state_dict`; lists come
    back as tuples where the optimizer has tuples (Adam's betas)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    data = json.loads((folder / OPTIMIZER_PARAM_GROUPS).read_text())
    state: Dict[int, dict] = {}
    for name, value in [*load_file(str(folder / OPTIMIZER_STATE)).items(),
                        *data['state'].items()]:
        index, key = name.split('.', 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for saved, live in zip(data['param_groups'], optimizer.param_groups):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v
                       for k, v in saved.items()})
    return {'state': state, 'param_groups': groups}


def write_rng_state(state_dir, generator_state: torch.Tensor, numpy_state: dict) -> None:
    """The torch generator's state (a byte tensor) and numpy's bit generator state (PCG64's
    128-bit integers are exact in JSON, not in a tensor)."""
    from safetensors.torch import save_file
    state_dir = Path(state_dir)
    save_file({'torch_generator': generator_state.contiguous()}, str(state_dir / RNG_TENSORS))
    (state_dir / RNG_JSON).write_text(json.dumps({'numpy_bit_generator': numpy_state}))


def read_rng_state(state_dir):
    """(torch generator state, numpy bit generator state) as `write_rng_state` wrote them."""
    from safetensors.torch import load_file
    state_dir = Path(state_dir)
    generator = load_file(str(state_dir / RNG_TENSORS))['torch_generator']
    return generator, json.loads((state_dir / RNG_JSON).read_text())['numpy_bit_generator']


def save_training_state(state_dir, optimizers: Dict[str, Optional[torch.optim.Optimizer]],
                        generator: torch.Generator, numpy_rng) -> None:
    for name, optimizer in optimizers.items():
        if optimizer is not None:
            write_optimizer_state(Path(state_dir) / OPTIMIZERS_DIR / name, optimizer.state_dict())
    write_rng_state(state_dir, generator.get_state(), numpy_rng.bit_generator.state)


def load_training_state(state_dir, optimizers: Dict[str, Optional[torch.optim.Optimizer]],
                        generator: torch.Generator, numpy_rng) -> None:
    """Restore what `save_training_state` wrote. A checkpoint with the old pickled file is
    refused (LegacyCheckpoint: one line naming `hilserl convert-checkpoint`), never unpickled."""
    state_dir = Path(state_dir)
    if (state_dir / LEGACY_OPTIMIZERS_FILE).is_file():
        raise legacy_checkpoint_error(state_dir.parent)
    for name, optimizer in optimizers.items():
        folder = state_dir / OPTIMIZERS_DIR / name
        if optimizer is not None and folder.is_dir():
            optimizer.load_state_dict(read_optimizer_state(folder, optimizer))
    generator_state, numpy_state = read_rng_state(state_dir)
    generator.set_state(generator_state)
    numpy_rng.bit_generator.state = numpy_state


def convert_checkpoint(path) -> List[Path]:
    """Rewrite the old pickled optimiser and RNG state (training_state/optimizers.pt) of a
    checkpoint, or of every checkpoint of a run directory, as safetensors + JSON, then delete the
    pickle. The old file is read with torch's restricted unpickler (weights_only=True): a file
    holding anything but tensors and plain containers is refused (LegacyCheckpoint) and none of
    its code runs. Returns the checkpoints converted (those already converted are left alone)."""
    path = Path(path)
    if (path / 'training_state').is_dir():
        checkpoints = [path]
    elif (path / 'checkpoints').is_dir() or path.name == 'checkpoints':
        checkpoints = complete_checkpoints(path if (path / 'checkpoints').is_dir()
                                           else path.parent)
    else:
        raise FileNotFoundError(f'{path} is neither a checkpoint (with training_state/) nor a '
                                'run directory (with checkpoints/)')
    converted = []
    for checkpoint in checkpoints:
        state_dir = checkpoint / 'training_state'
        legacy = state_dir / LEGACY_OPTIMIZERS_FILE
        if not legacy.is_file():
            continue
        try:
            old = torch.load(legacy, map_location='cpu', weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError...
            raise LegacyCheckpoint(f'{legacy} holds more than tensors and plain values and was '
                                   f'not loaded ({_refusal_reason(exc)}); this checkpoint '
                                   f'cannot be converted safely: delete {checkpoint} (a resume '
                                   'then starts from the one before)') from None
        # written beside, then moved in: an interrupted conversion leaves the pickle, and
        # running the command again redoes it
        staging = state_dir / (OPTIMIZERS_DIR + '.tmp')
        if staging.exists():
            shutil.rmtree(staging)
        for name in ('critic_opt', 'actor_opt', 'temperature_opt', 'grasp_opt'):
            if old.get(name) is not None:
                write_optimizer_state(staging / name, old[name])
        write_rng_state(state_dir, old['generator'], old['rng'])
        if (state_dir / OPTIMIZERS_DIR).exists():
            shutil.rmtree(state_dir / OPTIMIZERS_DIR)
        staging.rename(state_dir / OPTIMIZERS_DIR)
        legacy.unlink()
        converted.append(checkpoint)
    return converted


def _refusal_reason(exc: Exception) -> str:
    """What torch's restricted unpickler refused, in a few words (its message is paragraphs of
    advice to load the file unrestricted, which is what must not happen here)."""
    text = str(exc)
    found = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if found:
        return f'it would call {found.group(1)}'
    lines = [re.sub(r'\x1b\[[0-9;]*m', '', line).strip() for line in text.splitlines()]
    return next((line for line in lines if line), type(exc).__name__)
