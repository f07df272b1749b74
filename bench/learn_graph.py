"""Learning benchmark through the real training graph (`make learn`).

Runs `hilserl train` (driver, camera, simulated human, actor, learner, recorder: the graph users
run, on the simulated clock) for a bounded number of training episodes, then `hilserl eval` on
fresh seeds with the final checkpoint. Bounded by episodes, not wall time, so a slow or loaded
machine still gets its curve. Writes, under --out:
  learning_curve.csv   one row per training episode (success, steps, interventions, moving
                       averages over --window episodes) from the episodes' episode.json
  learning_curve.png   the same, drawn with OpenCV, and the eval success rate
  summary.json         episodes, eval success, learner counters, wall time, command lines

  python bench/learn_graph.py --episodes 60 --eval-episodes 50 --out outputs/learn
  python bench/learn_graph.py --config config/sim_learn_conv.yaml --set algorithm.bc_weight=0
"""
import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import cv2
import numpy as np
import yaml

from hilserl.data.bags import complete_episodes


def run(cmd, log_path: Path) -> int:
    """Run a command, teeing its output into a log file; returns the exit code."""
    print('$ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)
    with open(log_path, 'a') as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if re.search(r'ended:|sac_learner\].*episodes|stopped|Error|error', line):
                print(line.rstrip(), flush=True)
        return proc.wait()


def with_overrides(config: Path, overrides, out: Path) -> Path:
    """A copy of the config with dotted key=value overrides (e.g. algorithm.bc_weight=0)."""
    data = yaml.safe_load(config.read_text()) or {}
    for item in overrides:
        key, _, value = item.partition('=')
        node = data
        *parents, leaf = key.split('.')
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    path = out / 'config.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def curve_rows(run_dir: Path, window: int, started_wall_s: float):
    """One row per training episode; `minutes`: when its bag closed (episode.json written),
    since `hilserl train` started (demo recording included, as `make train` prints it)."""
    episodes = sorted(((int(meta.get('episode', -1)), meta, path)
                       for path, meta in complete_episodes(run_dir / 'episodes')),
                      key=lambda item: item[0])
    rows = []
    for i, (index, meta, path) in enumerate(episodes):
        recent = [m for _, m, _ in episodes[max(0, i + 1 - window):i + 1]]
        steps = max(int(meta.get('steps', 0)), 1)
        closed_s = (path / 'episode.json').stat().st_mtime
        rows.append({
            'episode': index, 'minutes': round((closed_s - started_wall_s) / 60, 2),
            'success': int(bool(meta.get('success'))),
            'steps': int(meta.get('steps', 0)),
            'intervention_rate': round(int(meta.get('interventions', 0)) / steps, 4),
            f'success_last_{window}': round(float(np.mean([bool(m.get('success'))
                                                           for m in recent])), 4),
            f'unaided_success_last_{window}': round(float(np.mean([
                bool(m.get('success')) and not m.get('interventions') for m in recent])), 4),
            f'intervention_rate_last_{window}': round(float(np.mean([
                int(m.get('interventions', 0)) / max(int(m.get('steps', 0)), 1)
                for m in recent])), 4)})
    return rows


def plot(rows, window: int, eval_success, path: Path) -> None:
    w, h, m = 900, 500, 60
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.rectangle(img, (m, m // 2), (w - m // 2, h - m), (0, 0, 0), 1)
    max_ep = max([r['episode'] for r in rows] + [1])

    def to_px(ep, v):
        return int(m + (w - 1.5 * m) * ep / max_ep), int(h - m - (h - 1.5 * m) * v)

    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = to_px(0, frac)[1]
        cv2.line(img, (m, y), (w - m // 2, y), (220, 220, 220), 1)
        cv2.putText(img, f'{frac:.2f}', (5, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    series = ((f'success_last_{window}', (0, 140, 0)),
              (f'unaided_success_last_{window}', (200, 120, 0)),
              (f'intervention_rate_last_{window}', (0, 0, 200)))
    for i, (key, color) in enumerate(series):
        if rows:
            pts = np.array([to_px(r['episode'], r[key]) for r in rows], np.int32)
            cv2.polylines(img, [pts], False, color, 2)
        cv2.putText(img, key, (m + 10 + 260 * i, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 2)
    if eval_success is not None:
        x, y = to_px(max_ep, eval_success)
        cv2.circle(img, (x, y), 7, (200, 0, 200), -1)
        cv2.putText(img, f'eval {eval_success:.0%}', (x - 110, y - 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (200, 0, 200), 2)
    cv2.putText(img, f'training episodes (0..{max_ep})', (w // 2 - 100, h - 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='config/sim_learn_conv.yaml')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a config value, e.g. algorithm.bc_weight=0 or seed=1')
    parser.add_argument('--out', default='outputs/learn')
    parser.add_argument('--episodes', type=int, default=60, help='training episodes')
    parser.add_argument('--demos', type=int, default=10)
    parser.add_argument('--eval-episodes', type=int, default=50)
    parser.add_argument('--window', type=int, default=10, help='moving-average window')
    # outside the test suite's 40-139, so a benchmark never hears a test's graph
    parser.add_argument('--domain-id', type=int, default=201)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = with_overrides(Path(args.config), args.set, out) if args.set else Path(args.config)
    hilserl = [sys.executable, '-m', 'hilserl_tools.cli']
    domain = ['--domain-id', str(args.domain_id)] if args.domain_id is not None else []
    log = out / 'graph.log'
    started, started_wall_s = time.monotonic(), time.time()
    train_cmd = hilserl + ['train', '--config', str(config), '--run-dir', str(out / 'run'),
                           '--episodes', str(args.episodes), '--demos', str(args.demos)] + domain
    code = run(train_cmd, log)
    train_minutes = (time.monotonic() - started) / 60
    checkpoints = sorted((out / 'run' / 'checkpoints').glob('[0-9]*'))
    eval_success, eval_cmd = None, None
    if code == 0 and checkpoints:
        eval_cmd = hilserl + ['eval', '--checkpoint', str(checkpoints[-1]), '--run-dir',
                              str(out / 'run'), '--episodes', str(args.eval_episodes)] + domain
        code = run(eval_cmd, log)
        summary_path = out / 'run' / 'eval' / 'eval_summary.json'
        if summary_path.is_file():
            eval_success = json.loads(summary_path.read_text())['success_rate']
    rows = curve_rows(out / 'run', args.window, started_wall_s)
    if rows:
        with open(out / 'learning_curve.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    plot(rows, args.window, eval_success, out / 'learning_curve.png')
    summary = {'config': str(config), 'overrides': args.set, 'training_episodes': len(rows),
               'training_successes': sum(r['success'] for r in rows),
               'eval_episodes': args.eval_episodes, 'eval_success': eval_success,
               'checkpoint': str(checkpoints[-1]) if checkpoints else None,
               'train_minutes': round(train_minutes, 1),
               'total_minutes': round((time.monotonic() - started) / 60, 1),
               'train_command': ' '.join(train_cmd),
               'eval_command': ' '.join(eval_cmd) if eval_cmd else None, 'exit_code': code}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
