"""Run a trained classifier over recorded episodes: first debounced success frame predicted vs
labelled, per episode, so false positives show up before a policy is trained on them."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from hilserl.learning.task import Streak
from reward_classifier_node.inference import SuccessDetector
from reward_classifier_node.model import load_classifier
from reward_classifier_node.train import load_frames, predict_proba


def first_debounced(probs: np.ndarray, threshold: float, debounce: int) -> Optional[int]:
    """Index of the frame at which `debounce` consecutive frames >= threshold complete."""
    streak = Streak(debounce)
    for i, p in enumerate(probs):
        if streak.update(p >= threshold):
            return i
    return None


def evaluate_episodes(model_dir, episodes_root, label_source: str = 'key', debounce: int = 3,
                      threshold: float = 0.0) -> List[dict]:
    model, saved_threshold, _ = load_classifier(model_dir)
    detector = SuccessDetector(model, threshold or saved_threshold, debounce)  # validates
    rows = []
    rerecorded: List[str] = []
    for episode in load_frames(episodes_root, label_source, rerecorded=rerecorded,
                               cameras=model.config.cameras):
        probs = predict_proba(model, episode.images)
        labelled = int(np.argmax(episode.labels)) if episode.labels.any() else None
        predicted = first_debounced(probs, detector.threshold, debounce)
        if predicted is None and labelled is None:
            verdict = 'ok (no success)'
        elif predicted is None:
            verdict = 'MISSED'
        elif labelled is None or predicted < labelled:
            verdict = 'FALSE POSITIVE'
        else:
            verdict = f'ok (+{predicted - labelled} frames)'
        rows.append({'episode': episode.name, 'frames': len(probs), 'labelled': labelled,
                     'predicted': predicted, 'max_probability': float(probs.max()),
                     'verdict': verdict})
    # shown, not judged: the person said these went wrong
    rows += [{'episode': name, 'frames': None, 'labelled': None, 'predicted': None,
              'max_probability': None, 'verdict': 'left out (marked re-record)'}
             for name in rerecorded]
    return rows


def format_table(rows: List[dict]) -> str:
    lines = [f'{"episode":<24} {"frames":>6} {"labelled":>9} {"predicted":>9} {"max p":>6}  '
             'verdict']
    for r in rows:
        fmt = lambda v: '-' if v is None else str(v)  # noqa: E731
        p = '-' if r['max_probability'] is None else f'{r["max_probability"]:.3f}'
        lines.append(f'{r["episode"]:<24} {fmt(r["frames"]):>6} {fmt(r["labelled"]):>9} '
                     f'{fmt(r["predicted"]):>9} {p:>6}  {r["verdict"]}')
    judged = [r for r in rows if r['frames'] is not None]
    bad = sum(r['verdict'] in ('MISSED', 'FALSE POSITIVE') for r in judged)
    left_out = len(rows) - len(judged)
    lines.append(f'{len(judged)} episodes, {bad} with a false positive or a missed success' +
                 (f' ({left_out} marked re-record left out)' if left_out else ''))
    return '\n'.join(lines)
