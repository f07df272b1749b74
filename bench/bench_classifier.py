"""Reward classifier on simulated episodes: record scripted-expert / noisy / random episodes
(rendered gripper camera, ground-truth success from the simulator), train on CPU within a time
budget, print validation accuracy, precision, recall and false-positive rate (split by episode)
and the per-episode table of first predicted vs labelled success.

  python bench/bench_classifier.py [--episodes 40] [--epochs 15] [--max-minutes 10]
"""
import argparse
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
import torch

from hilserl_tools import cli
from hilserl.data.bags import complete_episodes
from reward_classifier_node.evaluate import evaluate_episodes, format_table
from reward_classifier_node.model import ClassifierConfig
from reward_classifier_node.train import TrainClassifierConfig, train_classifier


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--mix', default='expert:0.5,noisy:0.3,random:0.2')
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--max-minutes', type=float, default=10.0)
    parser.add_argument('--out', default=None, help='keep episodes and model here')
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.out or tempfile.mkdtemp(prefix='hilserl_clf_'))
    started = time.perf_counter()
    # through the record graph, as `hilserl record` (the simulated human plays the mix)
    if cli.main(['record', '--episodes', str(args.episodes), '--mix', args.mix, '--seed', '1',
                 '--output', str(root / 'data')]) != 0:
        raise SystemExit('recording failed')
    metas = [meta for _, meta in complete_episodes(root / 'data')]
    print(f'recorded {len(metas)} episodes ({sum(bool(m["success"]) for m in metas)} successful) '
          f'in {time.perf_counter() - started:.0f} s')
    started = time.perf_counter()
    result = train_classifier(root / 'data', root / 'model', ClassifierConfig(),
                              TrainClassifierConfig(epochs=args.epochs,
                                                    label_source='ground_truth',
                                                    max_minutes=args.max_minutes),
                              progress=print)
    best = result['best']
    print(f'training time {time.perf_counter() - started:.0f} s (CPU, 2 threads)')
    print(f'validation (by episode): accuracy {best["accuracy"]:.4f}  precision '
          f'{best["precision"]:.4f}  recall {best["recall"]:.4f}  false-positive rate '
          f'{best["false_positive_rate"]:.4f}  threshold {best["threshold"]:.3f}  '
          f'({best["frames"]} frames)')
    print(format_table(evaluate_episodes(root / 'model', root / 'data', 'ground_truth', 3)))


if __name__ == '__main__':
    main()
