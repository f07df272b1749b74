"""`hilserl plot RUN_DIR`: PNG charts of a training run, drawn with OpenCV (no plotting library
needed): success rate, intervention rate and episode return against episodes and wall time (from
the episodes' episode.json), critic/actor losses and critic updates/s against optimisation steps
and wall time (from metrics.csv)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from hilserl.data.bags import complete_episodes
from hilserl.configuration.config import load_train_config

Series = Dict[str, Tuple[Sequence[float], Sequence[float]]]
COLORS = [(200, 80, 0), (0, 140, 0), (0, 0, 200), (160, 0, 160)]  # BGR


def line_chart(series: Series, title: str, x_label: str, path: Path,
               y_range: Optional[Tuple[float, float]] = None, size=(900, 420)) -> Path:
    """Lines (name -> (xs, ys)) on shared axes, with tick labels, written as a PNG."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys if math.isfinite(y)]
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    y0, y1 = y_range or ((min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0))
    x1, y1 = (x1 if x1 > x0 else x0 + 1.0), (y1 if y1 > y0 else y0 + 1.0)

    def px(x, y):
        return (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for frac in np.linspace(0, 1, 5):
        y = y0 + frac * (y1 - y0)
        _, py = px(x0, y)
        cv2.line(img, (left, py), (w - right, py), (225, 225, 225), 1)
        cv2.putText(img, f'{y:.3g}', (5, py + 4), font, 0.4, (0, 0, 0), 1)
        x = x0 + frac * (x1 - x0)
        qx, _ = px(x, y0)
        cv2.putText(img, f'{x:.4g}', (qx - 15, h - bottom + 18), font, 0.4, (0, 0, 0), 1)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        points = [px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(points) > 1:
            cv2.polylines(img, [np.array(points, np.int32)], False, color, 2)
        elif points:
            cv2.circle(img, points[0], 3, color, -1)
        cv2.putText(img, name, (left + 10 + 200 * i, top - 8), font, 0.45, color, 1)
    cv2.putText(img, title, (w // 2 - 8 * len(title) // 2, 18), font, 0.5, (0, 0, 0), 1)
    cv2.putText(img, x_label, (w // 2 - 60, h - 10), font, 0.45, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f'could not write {path}')
    return path


def moving_mean(values: Sequence[float], window: int) -> List[float]:
    return [float(np.mean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))]


def _metrics_rows(run_dir: Path) -> List[Dict[str, float]]:
    path = run_dir / 'metrics.csv'
    if not path.is_file():
        return []
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ('', None)})
    return rows


def plot_run(run_dir, out_dir=None, window: int = 10) -> List[Path]:
    """Write the run's charts; returns their paths. FileNotFoundError when the directory holds
    neither episodes nor metrics.csv."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / 'plots'
    # the training episodes only (not demos/ or eval/ beside them)
    source = run_dir / 'episodes' if (run_dir / 'episodes').is_dir() else run_dir
    episodes = sorted(complete_episodes(source), key=lambda e: e[1].get('episode', 0))
    rows = _metrics_rows(run_dir)
    if not episodes and not rows:
        raise FileNotFoundError(f'{run_dir}: no episodes (episodes/*/episode.json) and no '
                                'metrics.csv to plot')
    written = []
    if episodes:
        number = [float(m.get('episode', i)) for i, (_, m) in enumerate(episodes)]
        wall = [(p / 'episode.json').stat().st_mtime for p, _ in episodes]
        minutes = [(t - min(wall)) / 60.0 for t in wall]
        success = moving_mean([float(bool(m.get('success'))) for _, m in episodes], window)
        human = moving_mean([m.get('interventions', 0) / max(m.get('steps', 0), 1)
                             for _, m in episodes], window)
        returns = [float(m.get('return', 0.0)) for _, m in episodes]
        for x, label, suffix in ((number, 'episode', 'episodes'),
                                 (minutes, 'wall time (min)', 'wall_time')):
            written.append(line_chart({f'success (last {window})': (x, success),
                                       f'human share of steps (last {window})': (x, human)},
                                      'success and intervention rate', label,
                                      out_dir / f'success_intervention_vs_{suffix}.png',
                                      y_range=(0.0, 1.0)))
            written.append(line_chart({'return': (x, returns),
                                       f'return (last {window})': (x, moving_mean(returns,
                                                                                  window))},
                                      'episode return', label,
                                      out_dir / f'return_vs_{suffix}.png'))
    if rows:
        step = [r.get('step', i) for i, r in enumerate(rows)]
        start = min(r.get('wall_time', 0.0) for r in rows)
        minutes = [(r.get('wall_time', start) - start) / 60.0 for r in rows]
        losses = {k: [r.get(k, math.nan) for r in rows] for k in ('critic_loss', 'actor_loss')}
        config = run_dir / 'run_config.yaml'  # the critic updates per optimisation step
        utd = load_train_config(config).algorithm.utd_ratio if config.is_file() else None
        updates = [(utd or 1.0) / r['step_time_s'] if r.get('step_time_s') else math.nan
                   for r in rows]
        rate_name = 'critic updates/s' if utd else 'optimisation steps/s'
        for x, label, suffix in ((step, 'optimisation step', 'steps'),
                                 (minutes, 'wall time (min)', 'wall_time')):
            written.append(line_chart({k: (x, v) for k, v in losses.items()}, 'losses', label,
                                      out_dir / f'losses_vs_{suffix}.png'))
            written.append(line_chart({rate_name: (x, updates)}, rate_name, label,
                                      out_dir / f'updates_per_s_vs_{suffix}.png'))
    return written
