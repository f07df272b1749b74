"""LeRobot 0.6.1's SAC optimisation step at the seed configuration, for a same-sitting comparison
with `bench/learner_speed.py` (issue #18). Runs in a venv of its own, never the project's:

  make bench-lerobot        # builds .venv-lerobot, then runs this and hilserl's rows interleaved

  .venv-lerobot/bin/python bench/lerobot_sac_step.py [--steps 2] [--threads 2] [--json FILE]

Seed configuration, as in learner_speed.py: batch 256 (128 online + 128 offline, LeRobot's
OnlineOfflineMixer), 3x128x128 images, 18-d state, 4-d action, UTD 20, 2 critics, hidden
[256, 256], latent 256, DrQ random shift (pad 4) in LeRobot's ReplayBuffer, 5,000 transitions per
buffer, frozen shared ResNet-10 encoder (or, with --encoder default, LeRobot's own small conv
encoder, trained). One step = LeRobot's `SACAlgorithm.update` through its `RLTrainer` (20
critic updates + actor + temperature) with its normalising preprocessor. The actor is timed
first (preprocess + `select_action` on one observation), before the buffers exist.

Where this differs from installing LeRobot as its README says, and why the timing is still its:
- The encoder: LeRobot loads `helper2424/resnet10` from the hub (AutoModel, remote code), which
  cannot be reached here. hilserl's ResNet10 is that model's architecture (GroupNorm, the same
  layers and shapes), with random weights: the same computation, so the same speed. It is wrapped
  to answer as the hub model does (`.last_hidden_state`, `config.hidden_sizes`).
- LeRobot 0.6.1 asks for Python >= 3.12 and torch < 2.12; this machine has Python 3.11 and the
  CPU torch 2.13, so it is installed without its pins (`--ignore-requires-python --no-deps`), and
  `--make-importable` respells its five 3.12-only lines (type aliases and type parameters:
  annotations only). PyPI's torchvision registers its compiled detection ops (nms, roi_align,
  ...) at import and they do not load beside the CPU torch; LeRobot's SAC path imports
  torchvision but calls none of them, so they are declared as never-called placeholders first.
"""
import argparse
import importlib.util
import json
import os
import re
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def import_torchvision():
    try:
        import torchvision  # noqa: F401
        return 'compiled ops loaded'
    except RuntimeError:
        for name in [m for m in list(sys.modules) if m.startswith('torchvision')]:
            del sys.modules[name]
    # declare every op torchvision registers a fake kernel for, as a never-called placeholder
    registrations = Path(importlib.util.find_spec('torchvision').submodule_search_locations[0],
                         '_meta_registrations.py').read_text()
    library = torch.library.Library('torchvision', 'DEF')
    for name in sorted(set(re.findall(r'torchvision::(\w+)', registrations))):
        library.define(name + '(Tensor x) -> Tensor')
    import torchvision  # noqa: F401,F811
    import_torchvision.library = library  # kept alive: the definitions go with it
    return 'compiled ops declared only (not called on the SAC path)'


def make_importable_on_311(package_dir: Path) -> list:
    """Rewrite LeRobot's few Python 3.12-only lines (PEP 695 `type X = ...` aliases and `[T]`
    type parameters) into their 3.11 spellings (plain aliases, TypeVar, Generic). Annotations
    only: no behaviour changes. Returns the files rewritten."""
    rewritten = []
    for path in sorted(package_dir.rglob('*.py')):
        source = path.read_text()
        try:
            compile(source, str(path), 'exec', dont_inherit=True)
            continue
        except SyntaxError:
            pass
        params = []

        def names(type_params: str) -> list:  # '[T: X, U]' -> ['T', 'U'], remembered
            found = [p.split(':')[0].strip() for p in type_params.split(',')]
            params.extend(found)
            return found
        source = re.sub(r'(?m)^(\s*)type (\w+) = ', r'\1\2 = ', source)

        def plain_def(match):  # 'def f[T](' -> 'def f('
            names(match.group(2))
            return match.group(1) + '('
        source = re.sub(r'(?m)^(\s*def \w+)\[([^\]]+)\]\(', plain_def, source)
        for match in list(re.finditer(r'(?m)^(\s*class \w+)\[([^\]]+)\](\((.*)\))?:', source)):
            generic = f'_Generic[{", ".join(names(match.group(2)))}]'
            bases = [b for b in (match.group(4), generic) if b]
            source = source.replace(match.group(0),
                                    f'{match.group(1)}({", ".join(bases)}):', 1)
        header = 'from typing import Generic as _Generic, TypeVar as _TypeVar\n' + ''.join(
            f'{name} = _TypeVar({name!r})\n' for name in dict.fromkeys(params))
        # after `from __future__` (which must come first), else before the first import: the
        # module docstring stays the docstring
        future = re.search(r'(?m)^from __future__ import .*\n', source)
        first_import = re.search(r'(?m)^(import|from) ', source)
        at = future.end() if future else first_import.start() if first_import else 0
        source = source[:at] + header + source[at:]
        compile(source, str(path), 'exec', dont_inherit=True)  # still refused: stop here
        path.write_text(source)
        rewritten.append(str(path.relative_to(package_dir)))
    return rewritten


def resnet10_class():
    """hilserl/learning/encoders.py by path: no other hilserl module (nor ROS) comes with it."""
    spec = importlib.util.spec_from_file_location('hilserl_encoders', REPO / 'hilserl' /
                                                  'learning' / 'encoders.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ResNet10


class HubShapedResNet10(torch.nn.Module):
    """Answers as `AutoModel.from_pretrained('helper2424/resnet10')` does."""

    def __init__(self):
        super().__init__()
        self.net = resnet10_class()()
        self.config = types.SimpleNamespace(hidden_sizes=list(self.net.widths))

    def forward(self, x):
        return types.SimpleNamespace(last_hidden_state=self.net(x))


def build(args):
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.gaussian_actor import modeling_gaussian_actor as modeling
    from lerobot.policies.gaussian_actor.configuration_gaussian_actor import (
        GaussianActorConfig)
    from lerobot.rl.algorithms.sac import SACAlgorithm, SACAlgorithmConfig

    def load_encoder(self, config):
        encoder = HubShapedResNet10()
        return encoder, encoder.config.hidden_sizes[-1]
    modeling.PretrainedImageEncoder._load_pretrained_vision_encoder = load_encoder

    image_key, state_key = 'observation.images.front', 'observation.state'
    policy_cfg = GaussianActorConfig(
        input_features={image_key: PolicyFeature(FeatureType.VISUAL, (3, 128, 128)),
                        state_key: PolicyFeature(FeatureType.STATE, (18,))},
        output_features={'action': PolicyFeature(FeatureType.ACTION, (4,))},
        dataset_stats={image_key: {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]},
                       state_key: {'min': [-1.0] * 18, 'max': [1.0] * 18},
                       'action': {'min': [-1.0] * 4, 'max': [1.0] * 4}},
        normalization_mapping={'VISUAL': NormalizationMode.MEAN_STD,
                               'STATE': NormalizationMode.MIN_MAX,
                               'ACTION': NormalizationMode.MIN_MAX},
        vision_encoder_name='helper2424/resnet10' if args.encoder == 'resnet10' else None,
        freeze_vision_encoder=args.encoder == 'resnet10',
        shared_encoder=True, latent_dim=256, device='cpu', storage_device='cpu')
    policy = modeling.GaussianActorPolicy(policy_cfg)
    policy.train()
    algo_cfg = SACAlgorithmConfig.from_policy_config(policy_cfg)
    algo_cfg.utd_ratio, algo_cfg.num_critics = 20, 2
    return policy_cfg, SACAlgorithm(policy, algo_cfg), (image_key, state_key)


def filled_buffer(keys, n, rng):
    from lerobot.rl.buffer import ReplayBuffer
    buffer = ReplayBuffer(n, device='cpu', state_keys=list(keys), storage_device='cpu')
    image_key, state_key = keys

    def observation():
        return {image_key: torch.from_numpy(rng.random((1, 3, 128, 128), np.float32)),
                state_key: torch.from_numpy(rng.uniform(-1, 1, (1, 18)).astype(np.float32))}
    state = observation()
    for i in range(n):
        next_state = observation()
        done = (i + 1) % 100 == 0
        buffer.add(state, torch.from_numpy(rng.uniform(-1, 1, (1, 4)).astype(np.float32)),
                   float(rng.random() < 0.2), next_state, done, False)
        state = observation() if done else next_state
    return buffer


def time_actor(policy, preprocessor, keys, iterations) -> dict:
    """One observation -> action as LeRobot's actor does it (preprocess, select_action), before
    the learner's buffers exist (LeRobot's actor is a process of its own)."""
    if not iterations:
        return {}
    rng = np.random.default_rng(1)
    image_key, state_key = keys
    observation = {image_key: torch.from_numpy(rng.random((1, 3, 128, 128), np.float32)),
                   state_key: torch.from_numpy(rng.uniform(-1, 1, (1, 18)).astype(np.float32))}
    policy.eval()
    latencies = []
    for i in range(iterations + 20):
        t0 = time.perf_counter()
        with torch.no_grad():
            policy.select_action(preprocessor.process_observation(dict(observation)))
        if i >= 20:  # the first calls allocate
            latencies.append(time.perf_counter() - t0)
    policy.train()
    return {'actor_p50_ms': float(np.percentile(latencies, 50) * 1e3),
            'actor_p99_ms': float(np.percentile(latencies, 99) * 1e3),
            'actor_iterations': iterations}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=2,
                        help='optimisation steps timed after one warm-up step')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--encoder', choices=('resnet10', 'default'), default='resnet10',
                        help="resnet10: frozen, shared (the seed); default: LeRobot's own "
                             'small conv encoder, trained')
    parser.add_argument('--transitions', type=int, default=5000, help='per buffer')
    parser.add_argument('--actor-iterations', type=int, default=500,
                        help='select_action calls timed (0: skip the actor)')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--make-importable', action='store_true',
                        help='rewrite the installed LeRobot for Python 3.11 and exit (set-up)')
    args = parser.parse_args()
    import lerobot
    if args.make_importable:
        print('rewritten for 3.11:', make_importable_on_311(Path(lerobot.__file__).parent))
        return
    torch.set_num_threads(args.threads)
    torchvision_note = import_torchvision()
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.rl.data_sources.data_mixer import OnlineOfflineMixer
    from lerobot.rl.trainer import RLTrainer

    policy_cfg, algorithm, keys = build(args)
    preprocessor, _ = make_pre_post_processors(policy_cfg=policy_cfg,
                                               dataset_stats=policy_cfg.dataset_stats)
    actor = time_actor(algorithm.policy, preprocessor, keys, args.actor_iterations)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    mixer = OnlineOfflineMixer(filled_buffer(keys, args.transitions, rng),
                               filled_buffer(keys, args.transitions, rng), online_ratio=0.5)
    fill_s = time.perf_counter() - t0
    trainer = RLTrainer(algorithm=algorithm, data_mixer=mixer, batch_size=256,
                        preprocessor=preprocessor)
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        trainer.training_step()
        times.append(time.perf_counter() - t0)
        print(f'lerobot step {step}{" (warm-up)" if step == 0 else ""}: {times[-1]:.1f} s',
              flush=True)
    result = {'encoder': args.encoder, 'lerobot_version': lerobot.__version__,
              'torch': torch.__version__,
              'threads': args.threads, 'torchvision': torchvision_note,
              'step_s': float(np.median(times[1:])), 'step_times_s': times,
              'updates_per_s': 20 / float(np.median(times[1:])), 'fill_s': fill_s,
              'rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              'load_1min': os.getloadavg()[0], **actor}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
