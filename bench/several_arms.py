"""Several simulated arms feeding one learner (`hilserl train --robots N`): episodes per hour and
learner ingestion for N = 1, 2, 4 on this machine, through the graph users run.

Each N is one `hilserl train --robots N --episodes E --demos 0` (E episodes per arm) on the
simulated clock. Two pacings: `paced` is the configuration as written (the clock waits for
`sim.min_updates_per_step` learner updates per transition, counted over all arms: the learner
bounds the rate, as it would a fleet of real arms that must not outrun it), `free` sets it to 0
(the arms run as fast as this machine simulates, renders and acts them; the learner keeps up or
queues). Figures come from the nodes' own log stamps (system time) and the final checkpoint's
counters:

  episodes/h     episodes of all arms / (last episode end - first actor up)
  stored/s       transitions the learner stored / the same span (received = stored checked)
  updates/s      the learner's last reported critic updates/s

  python bench/several_arms.py                       # N = 1 2 4, both pacings, 3 episodes each
  python bench/several_arms.py --robots 1 2 --episodes 2 --pacing free
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import yaml

ROOT = Path(__file__).resolve().parents[1]
_STAMP = r'\[(\d+\.\d+)\]'
ACTOR_UP = re.compile(_STAMP + r' \[[\w.]*sac_actor\]: sac_actor up')
EPISODE_END = re.compile(_STAMP + r' \[[\w.]*sac_actor\]: episode \d+ ended')
UPDATES = re.compile(r'critic updates/s ([\d.]+)')


def run_once(robots: int, episodes: int, config: dict, pacing: str, work: Path,
             domain_id: int, max_minutes: float) -> dict:
    cfg = json.loads(json.dumps(config))
    if pacing == 'free':
        cfg.setdefault('sim', {})['min_updates_per_step'] = 0.0
    run_dir = work / f'{pacing}_{robots}'
    config_path = work / f'{pacing}_{robots}.yaml'
    config_path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, '-m', 'hilserl_tools.cli', 'train', '--robots', str(robots),
           '--episodes', str(episodes), '--demos', '0', '--config', str(config_path),
           '--run-dir', str(run_dir), '--domain-id', str(domain_id), '--device', 'cpu',
           '--max-minutes', str(max_minutes)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall_s = time.monotonic() - started
    out = result.stdout + result.stderr
    (work / f'{pacing}_{robots}.log').write_text(out)
    ups = [float(m) for m in ACTOR_UP.findall(out)]
    ends = [float(m) for m in EPISODE_END.findall(out)]
    last = (run_dir / 'checkpoints' / 'last')
    counts = {}
    if last.is_file():
        state = run_dir / 'checkpoints' / last.read_text().strip() / 'training_state' / 'state.json'
        counts = json.loads(state.read_text())['transitions']
    span_s = (max(ends) - min(ups)) if ends and ups else float('nan')
    updates = UPDATES.findall(out)
    return {'pacing': pacing, 'robots': robots, 'episodes': len(ends), 'exit_code':
            result.returncode, 'wall_s': round(wall_s, 1), 'span_s': round(span_s, 1),
            'episodes_per_hour': round(3600 * len(ends) / span_s, 1) if ends else 0.0,
            'stored': counts.get('stored'), 'received': counts.get('received'),
            'missing': counts.get('missing'), 'dropped': counts.get('dropped'),
            'stored_per_s': round(counts.get('stored', 0) / span_s, 2) if ends else 0.0,
            'critic_updates_per_s': float(updates[-1]) if updates else None,
            'load_before': round(load_before, 2), 'load_after': round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--robots', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--episodes', type=int, default=3, help='per arm')
    parser.add_argument('--pacing', nargs='+', default=['paced', 'free'],
                        choices=['paced', 'free'])
    parser.add_argument('--config', default=str(ROOT / 'config' / 'sim_learn_conv.yaml'))
    parser.add_argument('--domain-id', type=int, default=203)
    parser.add_argument('--max-minutes', type=float, default=30.0, help='per run')
    parser.add_argument('--out', default='', help='JSON results file (default: print only)')
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    rows = []
    with tempfile.TemporaryDirectory(prefix='several_arms_') as tmp:
        for pacing in args.pacing:
            for robots in args.robots:
                row = run_once(robots, args.episodes, config, pacing, Path(tmp),
                               args.domain_id, args.max_minutes)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f'\n{"pacing":7} {"N":>2} {"episodes":>8} {"episodes/h":>10} {"stored/s":>9} '
          f'{"updates/s":>9} {"missing":>7} {"load":>9}')
    for r in rows:
        print(f'{r["pacing"]:7} {r["robots"]:>2} {r["episodes"]:>8} {r["episodes_per_hour"]:>10} '
              f'{r["stored_per_s"]:>9} {str(r["critic_updates_per_s"]):>9} '
              f'{str(r["missing"]):>7} {r["load_before"]:>4}-{r["load_after"]:<4}')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({'config': args.config, 'episodes_per_arm':
                                              args.episodes, 'rows': rows}, indent=2))
    return 0 if all(r['exit_code'] == 0 for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
