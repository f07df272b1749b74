"""The simulated human through the graph: `hilserl record` with the scripted expert alone (no
policy), on the simulated clock, quiet and with CPU-bound processes beside it. Prints success
rate, episode lengths and simulated control steps per wall second.

  python bench/bench_sim.py [--episodes 50] [--load 0 2] [--seed 0]
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
import numpy as np

from hilserl_tools import cli
from hilserl.data.bags import complete_episodes


def run(episodes: int, seed: int, load: int, domain_id: int):
    hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(load)]
    root = Path(tempfile.mkdtemp(prefix='hilserl_expert_'))
    try:
        started = time.perf_counter()
        code = cli.main(['record', '--episodes', str(episodes), '--mix', 'expert:1', '--seed',
                         str(seed), '--output', str(root), '--domain-id', str(domain_id)])
        elapsed = time.perf_counter() - started
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    metas = [meta for _, meta in complete_episodes(root)]
    return code, metas, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--load', type=int, nargs='+', default=[0, 2],
                        help='CPU-bound processes running beside each measurement')
    parser.add_argument('--domain-id', type=int, default=71)
    args = parser.parse_args()
    rows = []
    for load in args.load:
        code, metas, elapsed = run(args.episodes, args.seed, load, args.domain_id)
        ok = sum(bool(m.get('success')) for m in metas)
        steps = [int(m.get('steps', 0)) for m in metas]
        rows.append(f'load {load}: expert success {ok}/{len(metas)} '
                    f'({100 * ok / max(len(metas), 1):.0f}%), median {np.median(steps):.0f} '
                    f'steps (max {max(steps, default=0)}), {sum(steps) / elapsed:.1f} control '
                    f'steps per wall second incl. start-up ({elapsed:.0f} s), exit {code}')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
