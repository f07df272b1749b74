"""`hilserl plot RUN_DIR`: PNG charts of a training run, drawn with OpenCV (no plotting library
needed): success rate, success without the human, intervention rate and episode return against
episodes and wall time (from the episodes' episode.json), critic/actor losses and critic
updates/s against optimisation steps and wall time (from metrics.csv), and the eval's success
over the table (from eval/eval_summary.json, or the eval's bags)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from hilserl.data.bags import complete_episodes
from hilserl.data.episode_positions import read_episode_positions
from hilserl.configuration.config import load_train_config

Series = Dict[str, Tuple[Sequence[float], Sequence[float]]]
COLORS = [(200, 80, 0), (0, 140, 0), (0, 0, 200), (160, 0, 160)]  # BGR


def integer_ticks(x0: float, x1: float, most: int = 8) -> List[int]:
    """Whole numbers in [x0, x1], 1, 2 or 5 times a power of ten apart, at most `most`."""
    low, high = math.ceil(x0), math.floor(x1)
    if high < low:
        return []
    steps = (m * 10 ** e for e in range(12) for m in (1, 2, 5))
    step = next(s for s in steps if (high - low) // s + 1 <= most)
    return list(range(math.ceil(low / step) * step, high + 1, step)) or [low]


def line_chart(series: Series, title: str, x_label: str, path: Path,
               y_range: Optional[Tuple[float, float]] = None, size=(900, 420),
               integer_x: bool = False) -> Path:
    """Lines (name -> (xs, ys)) on shared axes, with tick labels, written as a PNG.
    `integer_x`: the x ticks are whole numbers (episodes)."""
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
    x_ticks = integer_ticks(x0, x1) if integer_x else np.linspace(x0, x1, 5)
    for x in x_ticks:
        qx, _ = px(x, y0)
        cv2.line(img, (qx, h - bottom), (qx, h - bottom + 4), (0, 0, 0), 1)
        text = f'{int(x)}' if integer_x else f'{x:.4g}'
        cv2.putText(img, text, (qx - 4 * len(text), h - bottom + 18), font, 0.4, (0, 0, 0), 1)
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
    no episodes, no metrics.csv and no eval to map."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / 'plots'
    # the training episodes only (not demos/ or eval/ beside them)
    source = run_dir / 'episodes' if (run_dir / 'episodes').is_dir() else run_dir
    beside = (run_dir / 'eval', run_dir / 'demos')
    episodes = sorted(((path, meta) for path, meta in complete_episodes(source)
                       if not any(folder in path.parents for folder in beside)),
                      key=lambda e: e[1].get('episode', 0))
    rows = _metrics_rows(run_dir)
    points = eval_points(run_dir)
    if not episodes and not rows and not points:
        raise FileNotFoundError(f'{run_dir}: no episodes (episodes/*/episode.json), no '
                                'metrics.csv and no eval (eval/eval_summary.json) to plot')
    written = []
    if episodes:
        number = [float(m.get('episode', i)) for i, (_, m) in enumerate(episodes)]
        wall = [(p / 'episode.json').stat().st_mtime for p, _ in episodes]
        minutes = [(t - min(wall)) / 60.0 for t in wall]
        success = moving_mean([float(bool(m.get('success'))) for _, m in episodes], window)
        # the policy taking over: successes in which the human drove no step
        alone = moving_mean([float(bool(m.get('success')) and not m.get('interventions', 0))
                             for _, m in episodes], window)
        human = moving_mean([m.get('interventions', 0) / max(m.get('steps', 0), 1)
                             for _, m in episodes], window)
        returns = [float(m.get('return', 0.0)) for _, m in episodes]
        for x, label, suffix in ((number, 'episode', 'episodes'),
                                 (minutes, 'wall time (min)', 'wall_time')):
            by_episode = suffix == 'episodes'
            written.append(line_chart({f'success (last {window})': (x, success),
                                       f'human share of steps (last {window})': (x, human),
                                       f'success without the human (last {window})':
                                       (x, alone)},
                                      'success and intervention rate', label,
                                      out_dir / f'success_intervention_vs_{suffix}.png',
                                      y_range=(0.0, 1.0), integer_x=by_episode))
            written.append(line_chart({'return': (x, returns),
                                       f'return (last {window})': (x, moving_mean(returns,
                                                                                  window))},
                                      'episode return', label,
                                      out_dir / f'return_vs_{suffix}.png',
                                      integer_x=by_episode))
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
    if points:
        written.append(success_map(points, out_dir / 'eval_success_map.png'))
    return written


# --- the eval's success over the table --------------------------------------------------------

class MapPoint(NamedTuple):
    x_m: float
    y_m: float
    success: bool
    episode: int
    source: str   # what the position is: episode_positions.MAP_SOURCES


def eval_points(run_dir: Path) -> List[MapPoint]:
    """The run's eval episodes on the table: eval_summary.json's positions (in RUN_DIR/eval/ or
    RUN_DIR itself), else read from the eval's bags (an eval run by `ros2 launch`, whose
    summary the hilserl command did not complete); none without an eval summary."""
    eval_dir = next((d for d in (run_dir / 'eval', run_dir)
                     if (d / 'eval_summary.json').is_file()), None)
    if eval_dir is None:
        return []
    summary_path = eval_dir / 'eval_summary.json'
    try:
        rows = json.loads(summary_path.read_text()).get('rows', [])
    except (OSError, ValueError) as exc:
        raise ValueError(f'{summary_path}: not readable JSON ({exc})') from None
    points = [MapPoint(*row['positions']['map_xy_m'], row.get('result') == 'SUCCESS',
                       int(row.get('episode', 0)), row['positions'].get('map_source', ''))
              for row in rows if (row.get('positions') or {}).get('map_xy_m')]
    if points:
        return points
    for path, meta in complete_episodes(eval_dir / 'episodes'):
        try:
            found = read_episode_positions(path)
        except (OSError, ValueError):
            continue  # bag-info names an unreadable bag; the map shows the others
        if found['map_xy_m']:
            points.append(MapPoint(*found['map_xy_m'], bool(meta.get('success')),
                                   int(meta.get('episode', 0)) + 1, found['map_source']))
    return points


MAP_TITLES = {'cube': 'cube position after the reset (simulation ground truth)',
              'tcp_at_success_key': 'gripper position at the success key',
              'tcp_at_end': 'gripper position at the end (no success key)'}


def success_map(points: Sequence[MapPoint], path: Path, cell_m: float = 0.02,
                size_px: int = 640) -> Path:
    """Top view of the table in base_link (x away from the arm, up; y to the arm's left, left):
    each eval episode where it played (green dot: success, red cross: failure), and 2 cm cells
    tinted from red to green by their success rate, with their counts."""
    left, right, top, bottom = 70, 30, 70, 60
    w, h = size_px + left + right, size_px + top + bottom
    img = np.full((h, w, 3), 255, np.uint8)
    xs, ys = [p.x_m for p in points], [p.y_m for p in points]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 0.06) + 2 * cell_m
    # the view's corner on the cell grid, so cells and ticks line up
    x_low = math.floor(((max(xs) + min(xs) - span) / 2) / cell_m) * cell_m
    y_low = math.floor(((max(ys) + min(ys) - span) / 2) / cell_m) * cell_m
    cells = math.ceil(span / cell_m) + 1
    span = cells * cell_m
    scale = size_px / span

    def px(x_m, y_m):  # +y to the left, +x up: the table seen from above, the arm below it
        return (int(round(left + (y_low + span - y_m) * scale)),
                int(round(top + (x_low + span - x_m) * scale)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    tally: Dict[Tuple[int, int], List[bool]] = {}
    for p in points:
        key = (int((p.x_m - x_low) // cell_m), int((p.y_m - y_low) // cell_m))
        tally.setdefault(key, []).append(p.success)
    for (i, j), results in tally.items():
        rate = sum(results) / len(results)
        corner_a = px(x_low + (i + 1) * cell_m, y_low + (j + 1) * cell_m)
        corner_b = px(x_low + i * cell_m, y_low + j * cell_m)
        tint = tuple(int(255 - 0.35 * (255 - c)) for c in
                     (60, int(60 + 140 * rate), int(200 - 140 * rate)))  # BGR red -> green
        cv2.rectangle(img, corner_a, corner_b, tint, -1)
        cv2.putText(img, f'{sum(results)}/{len(results)}', (corner_a[0] + 3, corner_a[1] + 14),
                    font, 0.4, (60, 60, 60), 1)
    for k in range(cells + 1):  # grid lines and ticks every cell, labels every other one
        gx, gy = px(x_low + k * cell_m, y_low + k * cell_m)
        cv2.line(img, (gx, top), (gx, top + size_px), (225, 225, 225), 1)
        cv2.line(img, (left, gy), (left + size_px, gy), (225, 225, 225), 1)
        if k % 2 == 0:
            cv2.putText(img, f'{y_low + k * cell_m:.2f}', (gx - 16, top + size_px + 18), font,
                        0.4, (0, 0, 0), 1)
            cv2.putText(img, f'{x_low + k * cell_m:.2f}', (8, gy + 4), font, 0.4, (0, 0, 0), 1)
    cv2.rectangle(img, (left, top), (left + size_px, top + size_px), (0, 0, 0), 1)
    for p in points:
        c = px(p.x_m, p.y_m)
        if p.success:
            cv2.circle(img, c, 6, (0, 150, 0), -1)
        else:
            cv2.line(img, (c[0] - 6, c[1] - 6), (c[0] + 6, c[1] + 6), (0, 0, 210), 2)
            cv2.line(img, (c[0] - 6, c[1] + 6), (c[0] + 6, c[1] - 6), (0, 0, 210), 2)
        cv2.putText(img, str(p.episode), (c[0] + 8, c[1] - 6), font, 0.35, (80, 80, 80), 1)
    successes = sum(p.success for p in points)
    sources = sorted({p.source for p in points})
    cv2.putText(img, f'eval: {successes}/{len(points)} successes by '
                + '; '.join(MAP_TITLES.get(s, s) for s in sources), (10, 22), font, 0.5,
                (0, 0, 0), 1)
    cv2.circle(img, (left + 6, 45), 6, (0, 150, 0), -1)
    cv2.putText(img, 'success', (left + 18, 50), font, 0.45, (0, 120, 0), 1)
    cv2.line(img, (left + 100, 39), (left + 112, 51), (0, 0, 210), 2)
    cv2.line(img, (left + 100, 51), (left + 112, 39), (0, 0, 210), 2)
    cv2.putText(img, f'failure   cells: successes/episodes ({cell_m * 100:.0f} cm)',
                (left + 120, 50), font, 0.45, (0, 0, 160), 1)
    cv2.putText(img, 'y (m): the arm\'s left <-    base_link, seen from above, arm below',
                (left, h - 16), font, 0.45, (0, 0, 0), 1)
    cv2.putText(img, 'x (m)', (8, top - 16), font, 0.45, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f'could not write {path}')
    return path
