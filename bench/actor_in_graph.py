"""The actor's policy latency with the rest of the training graph running (issue #18 item 2):
`hilserl train` on the simulated arm with the seed's frozen GroupNorm ResNet-10 (random weights
in the upstream layout stand in for the pretrained ones: the same computation), feature cache,
learner, camera, driver, simulated human and recorder all on this machine, once per acting
backend. The actor reports every proposal's wall time at exit; printed against the fp32 floor
(the network's counted FLOPs over the measured matmul rate at the actor's thread count).

  python bench/actor_in_graph.py --episodes 22        # >= 2,000 acts per backend

The clock does not wait for the learner here (`sim.min_updates_per_step: 0`), so the episodes
run at the speed of the arm, camera and actor while the learner trains beside them.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import yaml

from actor_backends import conv_flops, matmul_peak_flops

ROOT = Path(__file__).resolve().parents[1]
LATENCY = re.compile(r'policy act latency: (\d+) acts, p50 ([\d.]+) ms, p99 ([\d.]+) ms')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--episodes', type=int, default=22, help='per backend (<= 100 steps)')
    parser.add_argument('--backends', nargs='+', default=['torch', 'onnxruntime'])
    parser.add_argument('--domain-id', type=int, default=204)
    parser.add_argument('--max-minutes', type=float, default=30.0)
    args = parser.parse_args()
    from hilserl.learning.encoders import ResNet10, save_encoder_weights
    work = Path(tempfile.mkdtemp(prefix='actor_in_graph_'))
    save_encoder_weights(ResNet10(), work / 'resnet10')
    torch.set_num_threads(1)  # the actor node's share (OMP_NUM_THREADS=1 in the graph)
    flops = conv_flops(ResNet10(), torch.zeros(1, 3, 128, 128))
    floor_ms = flops / matmul_peak_flops() * 1e3
    rows = []
    for backend in args.backends:
        config = yaml.safe_load((ROOT / 'config' / 'train.yaml').read_text())
        config['policy'].update(pretrained_encoder_path=str(work / 'resnet10'),
                                acting_backend=backend)
        config['sim'] = {**config.get('sim', {}), 'min_updates_per_step': 0.0}
        path = work / f'{backend}.yaml'
        path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, '-m', 'hilserl_tools.cli', 'train', '--config', str(path),
               '--run-dir', str(work / backend), '--episodes', str(args.episodes),
               '--demos', '0', '--device', 'cpu', '--domain-id', str(args.domain_id),
               '--max-minutes', str(args.max_minutes)]
        print('$ ' + ' '.join(cmd), flush=True)
        load_before = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        (work / f'{backend}.log').write_text(out.stdout + out.stderr)
        found = LATENCY.findall(out.stdout + out.stderr)
        if not found:
            print(f'{backend}: no latency line (exit {out.returncode}); log {work}/{backend}.log')
            continue
        acts, p50, p99 = int(found[-1][0]), float(found[-1][1]), float(found[-1][2])
        rows.append((backend, acts, p50, p99, load_before, os.getloadavg()[0]))
    print(f'\nactor with the training graph running (ResNet-10 GroupNorm 128x128, '
          f'{flops / 1e6:.0f} MFLOP; fp32 floor at 1 thread {floor_ms:.2f} ms)')
    print('| acting backend | acts | p50 ms | p99 ms | p50 / floor | p99 / p50 | load |')
    print('|---|---|---|---|---|---|---|')
    for backend, acts, p50, p99, before, after in rows:
        print(f'| {backend} | {acts} | {p50:.2f} | {p99:.2f} | {p50 / floor_ms:.2f} | '
              f'{p99 / p50:.2f} | {before:.1f}-{after:.1f} |')
    return 0 if len(rows) == len(args.backends) else 1


if __name__ == '__main__':
    sys.exit(main())
