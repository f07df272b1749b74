"""Learner and actor speed at the seed configuration, against LeRobot 0.6.1's anchor numbers.

Seed configuration: batch 256 (128 online + 128 offline), 3x128x128 images, 18-d state, 4-d
action, UTD 20, 2 critics, hidden [256, 256], latent 256, DrQ pad 4, 5,000 transitions per
buffer. One optimisation step = 20 critic updates + actor + temperature.
The learner and the actor of each encoder run in processes of their own (as the nodes do), so
peak RSS is the learner's and the actor is timed without a learner's heap. Prints one table.

  python bench/learner_speed.py [--device auto|cpu|cuda] [--steps 3] [--cache-shifts 2]
                                [--encoders resnet10,resnet10_exact,small_conv]
                                [--replay-images file|memory] [--pretrained-encoder DIR|REPO]
                                [--acting-backend torch|onnxruntime] [--lerobot-python PY]

The frozen ResNet-10 is helper2424/resnet10 (GroupNorm: nothing folds into the convolutions)
from the local Hugging Face cache or a directory; where it is not on the machine, random
weights in its layout stand in (the same computation, so the same speed).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
import numpy as np

# LeRobot 0.6.1 measured side by side with hilserl on this machine (2 cores, torch 2 threads,
# seed configuration, interleaved runs; issue #18). Hosts here vary ~2x from day to day: the
# percentages of this machine's own limit printed below are the figures that travel.
ANCHOR = {
    'resnet10': {'step_s': 184.0, 'updates_per_s': 20 / 184.0, 'actor_p50_ms': 21.5,
                 'actor_p99_ms': 33.6, 'rss_gib': 3.95},
    'small_conv': {'step_s': 49.6, 'updates_per_s': 20 / 49.6, 'actor_p50_ms': 1.7,
                   'actor_p99_ms': 2.4, 'rss_gib': 3.4},
}
LABELS = {'resnet10': 'frozen ResNet-10 (feature cache)', 'small_conv': 'small conv (trained)'}
# LeRobot's counterpart of each (bench/lerobot_sac_step.py --encoder), and its row label
LEROBOT = {'resnet10': ('resnet10', 'LeRobot ResNet-10 (exact maths)'),
           'small_conv': ('default', 'LeRobot default conv (trained)')}


def fill(buffer, n, rng, episode_steps=100, batch=1):
    """n transitions of 100-step episodes; with a feature cache the frozen encoder runs on
    `batch` images at a time, as the learner stores transitions that queued up."""
    from hilserl.data.transition import Transition
    image = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8)
    queued = []

    def store():
        features = [None] * len(queued)
        if buffer.featurizer is not None and batch > 1 and queued:
            features = buffer.featurizer(np.stack([t.image for t in queued]))
        for t, f in zip(queued, features):
            buffer.add(t, f)
        queued.clear()
    for i in range(n):
        end = (i + 1) % episode_steps == 0
        next_image = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8)
        queued.append(Transition(image, rng.normal(size=18).astype(np.float32),
                                 rng.uniform(-1, 1, 4).astype(np.float32), float(rng.normal()),
                                 next_image, rng.normal(size=18).astype(np.float32), end, False,
                                 bool(rng.random() < 0.2)))
        if len(queued) >= batch:
            store()
        image = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8) if end else next_image
    store()


def base_encoder(encoder: str) -> str:
    """resnet10_exact is the frozen ResNet-10 run without the feature cache."""
    return encoder.replace('_exact', '')


def build(args):
    import torch
    torch.set_num_threads(args.threads)
    from hilserl.configuration.config import TrainConfig, with_fields
    from hilserl_policy.checkpoint import build_agent
    # resnet10_exact: the frozen ResNet-10 without the feature cache (a pass per use)
    encoder = base_encoder(args.encoder)
    frozen = encoder == 'resnet10'
    shifts = 0 if args.encoder.endswith('_exact') else args.cache_shifts
    cfg = with_fields(TrainConfig(), encoder=encoder, freeze_encoder=frozen,
                      pretrained_encoder_path=args.pretrained_encoder if frozen else None,
                      feature_cache_shifts=shifts if frozen else 0,
                      batch_size=256, utd_ratio=20, device=args.device,
                      online_buffer_capacity=args.transitions,
                      replay_image_storage=args.replay_images,
                      offline_buffer_capacity=args.transitions,
                      acting_backend=args.acting_backend)
    return build_agent(cfg), cfg.algorithm


def learner_part(args) -> dict:
    import torch
    from hilserl.learning.allocator import retain_freed_memory
    from hilserl_policy.replay_buffer import ReplayBuffer, sample_mixed
    retain_freed_memory()  # as the Learner does
    agent, sac = build(args)
    featurizer = agent.featurize if sac.feature_cache_shifts else None
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    image_dir = None
    if args.replay_images == 'file':  # as the learner (replay.replay_image_storage: file)
        scratch = tempfile.TemporaryDirectory(prefix='learner_speed_')  # removed at exit
        image_dir = scratch.name
    online = ReplayBuffer(args.transitions, (3, 128, 128), 18, 4, featurizer, image_dir)
    offline = ReplayBuffer(args.transitions, (3, 128, 128), 18, 4, featurizer, image_dir)
    from hilserl_policy.learner import STORE_BATCH
    fill(online, args.transitions, rng, batch=STORE_BATCH)
    fill(offline, args.transitions, rng, batch=STORE_BATCH)
    fill_s = time.perf_counter() - started
    single_ms = 0.0
    if featurizer:  # a transition stored alone (the learner idle when it arrives)
        t0 = time.perf_counter()
        fill(online, 20, rng)
        single_ms = (time.perf_counter() - t0) / 20 * 1e3
    sample = lambda: sample_mixed(online, offline, 256, 0.5, rng)  # noqa: E731
    agent.update(sample)  # warm-up (allocations, first-call costs)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        agent.update(sample)
        if agent.device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    step_flop = counted_flop(lambda: agent.update(sample))
    # what storing one transition costs the learner (the frozen encoder on K shifts per image
    # with the feature cache), and its share of one core at the 10 Hz control rate
    insert_flop = counted_flop(lambda: fill(online, 1, rng)) if featurizer else 0.0
    return {'encoder': args.encoder, 'step_s': step_s, 'updates_per_s': 20 / step_s,
            'step_flop': step_flop, 'insert_ms': fill_s / (2 * args.transitions) * 1e3,
            'insert_single_ms': single_ms, 'store_batch': STORE_BATCH,
            'insert_flop': insert_flop,
            'rss_gib': rss_gib, 'fill_s': fill_s, 'device': str(agent.device),
            'cache_shifts': sac.feature_cache_shifts, 'replay_images': args.replay_images}


@contextlib.contextmanager
def on_torch(agent):
    """The same maths on torch's path while FLOPs are counted: ONNX Runtime's work
    (policy.acting_backend onnxruntime) is invisible to torch's counter."""
    policy = agent.policy
    cfg, programs = policy.cfg, dict(policy._acting_programs)
    policy.cfg = dataclasses.replace(cfg, acting_backend='torch')
    policy._acting_programs.clear()
    try:
        yield
    finally:
        policy.cfg = cfg
        policy._acting_programs.clear()
        policy._acting_programs.update(programs)


def counted_flop(fn) -> float:
    """FLOPs of one call, counted by torch from the shapes of the operations it really runs
    (convolutions, matmuls and their backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def peak_part(args) -> dict:
    """This machine's fp32 limit at the benchmark's thread count: a large square matmul, best of
    several (the figure every other one is a percentage of)."""
    import torch
    torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device.startswith('cuda') else 'cpu')
    n = 4096
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float('inf')
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {'peak_gflops': 2 * n ** 3 / best / 1e9}


def actor_part(args) -> dict:
    """One observation -> stochastic action, in a process of its own as the actor node is."""
    import torch
    agent, _ = build(args)
    torch.set_num_threads(args.actor_threads)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, 128, 128), dtype=np.uint8)
    state = rng.normal(size=18).astype(np.float32)
    for _ in range(20):
        agent.act(image, state, False)
    latencies = []
    for _ in range(args.actor_iterations):
        t0 = time.perf_counter()
        agent.act(image, state, False)
        if agent.device.type == 'cuda':
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t0)
    return {'actor_p50_ms': float(np.percentile(latencies, 50) * 1e3),
            'actor_p99_ms': float(np.percentile(latencies, 99) * 1e3),
            'act_flop': act_flop(agent, image, state)}


def act_flop(agent, image, state) -> float:
    with on_torch(agent):
        for _ in range(5):  # trace the torch program, and let TorchScript's profiling runs
            agent.act(image, state, False)  # settle, outside the counter (it fails in them)
        return counted_flop(lambda: agent.act(image, state, False))


def row_label(row: dict) -> str:
    """A frozen ResNet-10 without the cache runs the exact maths (a backbone pass per use)."""
    if row['encoder'].startswith('resnet10') and not row['cache_shifts']:
        return 'frozen ResNet-10 (exact, no cache)'
    return LABELS[base_encoder(row['encoder'])]


def encoder_weights(args):
    """Point args.pretrained_encoder at weights that exist; returns a note when random weights
    in the upstream layout stand in for the pretrained ones (kept until the process exits)."""
    from hilserl.configuration.pretrained import PretrainedWeightsMissing, resolve_pretrained_dir
    if not any(e.startswith('resnet10') for e in args.encoders.split(',')):
        return None
    try:
        resolve_pretrained_dir(args.pretrained_encoder)
        return None
    except PretrainedWeightsMissing:
        from hilserl.learning.encoders import ResNet10, save_encoder_weights
        scratch = tempfile.TemporaryDirectory(prefix='resnet10_')
        encoder_weights.scratch = scratch  # removed at exit
        missing, args.pretrained_encoder = args.pretrained_encoder, scratch.name
        save_encoder_weights(ResNet10(), scratch.name)
        return (f'{missing} is not on this machine: random weights in its layout (same '
                'computation, same speed)')


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='auto | cpu | cuda[:N]')
    parser.add_argument('--steps', type=int, default=3, help='timed optimisation steps')
    parser.add_argument('--cache-shifts', type=int, default=2,
                        help='feature_cache_shifts for the frozen ResNet-10')
    parser.add_argument('--transitions', type=int, default=5000, help='per buffer')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (learner)')
    parser.add_argument('--actor-threads', type=int, default=2,
                        help='torch threads while timing the actor (as the anchor; the actor '
                             'node uses 1 beside a learner)')
    parser.add_argument('--actor-iterations', type=int, default=300)
    parser.add_argument('--replay-images', choices=('file', 'memory'), default='file',
                        help="replay image storage (replay.replay_image_storage): 'file' keeps "
                             'the pixels in the page cache, outside the learner process')
    parser.add_argument('--encoders', default='resnet10,resnet10_exact,small_conv',
                        help='resnet10 (feature cache), resnet10_exact (no cache: a frozen pass '
                             'per use, the same maths as LeRobot), small_conv (trained)')
    parser.add_argument('--acting-backend', choices=('torch', 'onnxruntime'), default='torch',
                        help="policy.acting_backend: what runs the actor's frozen ResNet-10")
    parser.add_argument('--pretrained-encoder', default='helper2424/resnet10',
                        help='frozen ResNet-10 weights: a directory or a repo id in the local '
                             'Hugging Face cache (random weights in its layout when absent)')
    parser.add_argument('--lerobot-python',
                        help='python of a venv holding LeRobot 0.6.1 (`make bench-lerobot` '
                             'builds .venv-lerobot): LeRobot runs in the same sitting, after '
                             'each hilserl row, and the ratios are against it, not the anchor')
    parser.add_argument('--encoder', help=argparse.SUPPRESS)
    parser.add_argument('--part', choices=('learner', 'actor', 'peak'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        parts = {'learner': learner_part, 'actor': actor_part, 'peak': peak_part}
        print(json.dumps(parts[args.part](args)))
        return
    stand_in = encoder_weights(args)

    def run_part(encoder, part, threads):
        cmd = [sys.executable, __file__, '--encoder', encoder, '--part', part]
        for name in ('device', 'steps', 'cache_shifts', 'transitions', 'threads',
                     'actor_threads', 'actor_iterations', 'replay_images', 'pretrained_encoder',
                     'acting_backend'):
            cmd += ['--' + name.replace('_', '-'), str(getattr(args, name))]
        print(f'# running {encoder} {part} ...', file=sys.stderr, flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
        return json.loads(out.stdout.strip().splitlines()[-1])

    def run_lerobot(key):
        kind = LEROBOT[key][0]
        print(f'# running LeRobot {kind} ...', file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch, 'lerobot.json')
            subprocess.run([args.lerobot_python, str(Path(__file__).with_name(
                'lerobot_sac_step.py')), '--encoder', kind, '--threads', str(args.threads),
                '--transitions', str(args.transitions), '--json', str(out)], check=True,
                stdout=sys.stderr, env={**os.environ, 'OMP_NUM_THREADS': str(args.threads)})
            return json.loads(out.read_text())

    peak = run_part('none', 'peak', args.threads)['peak_gflops']
    rows, lerobot = [], {}
    for encoder in args.encoders.split(','):
        row = {}
        for part in ('learner', 'actor'):  # separate processes: RSS and latency their own
            row.update(run_part(encoder, part, args.threads))
        rows.append(row)
        key = base_encoder(encoder)
        if args.lerobot_python and key not in lerobot:
            lerobot[key] = run_lerobot(key)
    anchors = {**ANCHOR, **lerobot}
    print(f'learner/actor speed, {rows[0]["device"]}, torch threads {args.threads} (actor '
          f'{args.actor_threads}), {args.transitions} transitions per buffer, median of '
          f'{args.steps} steps, replay images in {args.replay_images}, acting backend '
          f'{args.acting_backend}, load {os.getloadavg()[0]:.1f}')
    header = (f'| {"encoder":<34} | {"s / optimisation step":>22} | {"critic updates/s":>17} | '
              f'{"actor p50 / p99 ms":>19} | {"peak RSS GiB":>13} |')
    print(header)
    print('|' + '|'.join('-' * (len(c)) for c in header.split('|')[1:-1]) + '|')
    for r in rows:
        a = anchors[base_encoder(r['encoder'])]
        ratio = lambda ours, theirs, lower=True: (theirs / ours if lower else ours / theirs)  # noqa
        step_ratio = ratio(r['step_s'], a['step_s'])
        updates_ratio = ratio(r['updates_per_s'], a['updates_per_s'], False)
        print(f'| {row_label(r):<34} | {r["step_s"]:8.2f} ({step_ratio:5.1f}x)'
              f'{"":>5} | {r["updates_per_s"]:6.2f} ({updates_ratio:5.1f}x) | '
              f'{r["actor_p50_ms"]:5.2f} / {r["actor_p99_ms"]:5.2f} '
              f'({ratio(r["actor_p99_ms"], a["actor_p99_ms"]):4.1f}x) | '
              f'{r["rss_gib"]:5.2f} ({ratio(r["rss_gib"], a["rss_gib"]):4.1f}x) |')
    for key, theirs in lerobot.items():
        print(f'| {LEROBOT[key][1]:<34} | {theirs["step_s"]:8.2f}{"":>14} | '
              f'{theirs["updates_per_s"]:6.2f}{"":>11} | {theirs["actor_p50_ms"]:5.2f} / '
              f'{theirs["actor_p99_ms"]:5.2f}{"":>6} | {theirs["rss_gib"]:5.2f}{"":>8} |')
    print('ratios: LeRobot / ours (higher is better), LeRobot ' + (
        f'{next(iter(lerobot.values()))["lerobot_version"]} measured in this run, after the '
        'hilserl rows of its encoder (the same seed configuration; its ResNet-10 is the same '
        'network, random weights; the cached row is against its exact maths)'
        if lerobot else '0.6.1 anchor from issue #18 (another day)') + ': ' + '; '.join(
        f'{LABELS[k]}: {v["step_s"]:.1f} s/step, {v["actor_p99_ms"]:.1f} ms p99, '
        f'{v["rss_gib"]:.2f} GiB' for k, v in (lerobot or ANCHOR).items()))
    if stand_in is not None:
        print(f'{LABELS["resnet10"]}: {stand_in}')
    print(f'\nagainst this machine\'s limit: fp32 peak {peak:.0f} GFLOP/s (4096x4096 matmul, '
          f'{args.threads} threads, best of 5); floor = counted FLOPs / peak')
    print('| figure | measured | counted GFLOP | floor | % of limit |')
    print('|---|---|---|---|---|')
    for r in rows:
        label = row_label(r)
        floors = ((f'{label}: optimisation step', r['step_s'], r['step_flop']),
                  (f'{label}: act p50', r['actor_p50_ms'] / 1e3, r['act_flop']))
        for name, seconds, flop in floors:
            floor_s = flop / (peak * 1e9)
            print(f'| {name} | {seconds * 1e3:.1f} ms | {flop / 1e9:.2f} | {floor_s * 1e3:.1f} ms '
                  f'| {100 * floor_s / seconds:.0f} % |')
        if r['insert_flop']:
            floor_s = r['insert_flop'] / (peak * 1e9)
            for how, ms in ((f'queued, {r["store_batch"]} at a time', r['insert_ms']),
                            ('alone', r['insert_single_ms'])):
                print(f'| {label}: storing one transition (cache fill), {how} | {ms:.1f} ms | '
                      f'{r["insert_flop"] / 1e9:.2f} | {floor_s * 1e3:.1f} ms | '
                      f'{100 * floor_s / (ms / 1e3):.0f} % |')
    for r in rows:
        if r['insert_flop']:
            # 10 transitions per second, each insert_ms of one core: insert_ms % of a core
            print(f'{row_label(r)}: storing transitions at the 10 Hz control rate costs '
                  f'{r["insert_ms"]:.0f} % of one core when they queue up '
                  f'({r["insert_ms"]:.1f} ms each), {r["insert_single_ms"]:.0f} % stored one by '
                  f'one; one optimisation step plus one stored transition: '
                  f'{r["step_s"] + r["insert_ms"] / 1e3:.2f} s')
    for r in rows:
        if r['cache_shifts']:
            print(f'{row_label(r)}: {r["cache_shifts"]} cached shifts per image; filling '
                  f'2 x {args.transitions} transitions (encoder at insertion) took '
                  f'{r["fill_s"]:.0f} s')


if __name__ == '__main__':
    main()
