"""Checkpoints: checkpoints/<step:06d>/pretrained_model (config.json + model.safetensors: the
policy's state dict, all an actor loads) and checkpoints/<step:06d>/training_state (the
algorithm's critics, targets and temperature in algorithm.safetensors; optimisers and RNG as
safetensors + JSON (`training_state.py`), step, replay buffers). Nothing in a checkpoint is a
pickle: loading one never runs code from the file.

Written into `<step>.tmp` and renamed, then `checkpoints/last` is replaced atomically: a crash at
any moment leaves the previous checkpoint intact and `latest_checkpoint()` never sees a partial
one (`hilserl.configuration.run_dir.remove_stale_checkpoints` deletes a crashed save's `.tmp` at
learner start).

Replay buffers are saved incrementally: `checkpoints/replay/<online|offline>/segment_*.npz`
hold the transitions, each segment those added between two checkpoints, and a checkpoint's
`training_state/<name>_buffer.json` lists the segments its buffer consists of. After each save
`prune_checkpoints` keeps the newest `learner.keep_last_checkpoints` checkpoints (never the newest
or the one the run resumed from) and deletes the segments no kept checkpoint needs.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from hilserl.configuration.config import TrainConfig
from hilserl.configuration.run_dir import (  # noqa: F401 - re-exported
    LEGACY_OPTIMIZERS_FILE, complete_checkpoints, latest_checkpoint, legacy_checkpoint_error)
from hilserl.robot.observation import state_bounds
from hilserl_policy.policy import (  # noqa: F401 - load_pretrained re-exported
    build_policy, load_pretrained, load_strict, read_pretrained, split_old_layout)
from hilserl_policy.replay_buffer import ReplayBuffer, segment_files
from hilserl_policy.sac import SAC
from hilserl_policy.training_state import load_training_state, save_training_state


def build_agent(cfg: TrainConfig, image_hw=None, device: Optional[str] = None,
                weights_from_checkpoint: bool = False) -> SAC:
    """The agent of a configuration; a frozen encoder loads its pretrained weights unless
    `weights_from_checkpoint` (a checkpoint's state, encoder included, is loaded next)."""
    return SAC(cfg.policy, cfg.algorithm, cfg.image_shape(image_hw), cfg.observation.state_dim,
               cfg.action.dim, discrete_gripper=cfg.action.gripper_mode == 'discrete',
               device=device or cfg.learner.device, seed=cfg.seed,
               weights_from_checkpoint=weights_from_checkpoint, state_bounds=state_bounds(cfg),
               cameras=len(cfg.image.cameras))


def save_checkpoint(run_dir, agent: SAC, cfg: TrainConfig, online: Optional[ReplayBuffer] = None,
                    offline: Optional[ReplayBuffer] = None, extra: Optional[dict] = None) -> Path:
    from safetensors.torch import save_file
    root = Path(run_dir) / 'checkpoints'
    final = root / f'{agent.step:06d}'
    tmp = root / f'{agent.step:06d}.tmp'
    if tmp.exists():
        shutil.rmtree(tmp)
    model_dir, state_dir = tmp / 'pretrained_model', tmp / 'training_state'
    model_dir.mkdir(parents=True)
    state_dir.mkdir()
    config = {'train_config': cfg.to_dict(), 'image_shape': list(agent.image_shape),
              'state_dim': agent.state_dim, 'action_dim': agent.action_dim,
              'step': agent.step, 'backbone_digest': agent.backbone_digest()}
    (model_dir / 'config.json').write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in agent.policy.state_dict().items()},
              str(model_dir / 'model.safetensors'))
    save_file({k: v.detach().cpu().contiguous() for k, v in agent.algorithm_state().items()},
              str(state_dir / 'algorithm.safetensors'))
    save_training_state(state_dir, _optimizers(agent), agent.generator, agent.rng)
    (state_dir / 'state.json').write_text(json.dumps({'step': agent.step, **(extra or {})}))
    for name, buffer in (('online', online), ('offline', offline)):
        if buffer is not None:  # only the transitions added since the previous checkpoint
            buffer.save_incremental(root / 'replay' / name, state_dir / f'{name}_buffer.json')
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    marker = root / 'last.tmp'
    marker.write_text(final.name)
    os.replace(marker, root / 'last')
    return final


def _optimizers(agent: SAC) -> dict:
    """The agent's optimizers by the name their state is saved under (grasp: None without a
    grasp critic)."""
    return {'critic_opt': agent.critic_opt, 'actor_opt': agent.actor_opt,
            'temperature_opt': agent.temperature_opt, 'grasp_opt': agent.grasp_opt}


def prune_checkpoints(run_dir, keep_last: int, protect: Iterable = (),
                      in_use: Iterable = ()) -> List[Path]:
    """Delete all but the newest `keep_last` checkpoints (0: none), never the newest one nor
    those in `protect` (the checkpoint a run resumed from), then the replay segments that no
    remaining checkpoint and nothing in `in_use` (the live buffers' segments) needs. Only the
    learner writes checkpoints, so nothing else is writing meanwhile. Returns the deleted
    checkpoints."""
    done = complete_checkpoints(run_dir)
    keep = {p.resolve() for p in done[-keep_last:]} if keep_last > 0 else \
        {p.resolve() for p in done}
    newest = latest_checkpoint(run_dir)
    keep |= {Path(p).resolve() for p in (newest, *protect) if p is not None}
    deleted = [p for p in done if p.resolve() not in keep]
    for path in deleted:
        shutil.rmtree(path)
    needed = {Path(p).resolve() for p in in_use}
    try:
        for checkpoint in complete_checkpoints(run_dir):
            for manifest in (checkpoint / 'training_state').glob('*_buffer.json'):
                needed.update(segment_files(manifest))
    except (OSError, ValueError, KeyError):  # an unreadable manifest: delete no segment
        return deleted
    replay = Path(run_dir) / 'checkpoints' / 'replay'
    for segment in (replay.glob('*/segment_*') if replay.is_dir() else ()):
        if segment.resolve() not in needed:
            segment.unlink()
    return deleted


def resume(checkpoint_dir, device: Optional[str] = None, image_dir=None
           ) -> Tuple[SAC, TrainConfig, Optional[ReplayBuffer], Optional[ReplayBuffer], dict]:
    """Restore agent, optimisers, RNG and buffers: training continues where it stopped.
    `image_dir`: keep the buffers' images in a file there (see replay.ImageStore)."""
    from safetensors.torch import load_file
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / 'training_state' / LEGACY_OPTIMIZERS_FILE).is_file():
        raise legacy_checkpoint_error(checkpoint_dir)  # before building anything
    model_dir, meta, cfg = read_pretrained(checkpoint_dir / 'pretrained_model')
    agent = build_agent(cfg, meta['image_shape'][1:], device, weights_from_checkpoint=True)
    weights_path = model_dir / 'model.safetensors'
    policy_state, algorithm_state = split_old_layout(load_file(str(weights_path)), agent.policy)
    load_strict(agent.policy, policy_state, weights_path)
    state_dir = checkpoint_dir / 'training_state'
    if (state_dir / 'algorithm.safetensors').is_file():
        algorithm_state = load_file(str(state_dir / 'algorithm.safetensors'))
    algorithm = {f'policy.{k}': v for k, v in agent.policy.state_dict().items()}
    algorithm.update(algorithm_state)
    load_strict(agent, algorithm, state_dir / 'algorithm.safetensors')
    agent.step = int(meta['step'])
    load_training_state(state_dir, _optimizers(agent), agent.generator, agent.rng)
    state = json.loads((state_dir / 'state.json').read_text())
    buffers = []
    for name, capacity in (('online', cfg.replay.online_buffer_capacity),
                           ('offline', cfg.replay.offline_buffer_capacity)):
        featurizer = agent.featurize if cfg.algorithm.feature_cache_shifts else None
        manifest, full = state_dir / f'{name}_buffer.json', state_dir / f'{name}_buffer.npz'
        if manifest.is_file():
            buffers.append(ReplayBuffer.load_incremental(manifest, capacity, featurizer,
                                                         image_dir))
        else:  # checkpoints written before incremental saves: the whole buffer in one file
            buffers.append(ReplayBuffer.load(full, capacity, featurizer, image_dir)
                           if full.is_file() else None)
    return agent, cfg, buffers[0], buffers[1], state
