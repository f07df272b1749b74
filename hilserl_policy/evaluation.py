"""Evaluation bookkeeping: the seed's per-episode table and a JSON summary."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hilserl.data.bags import write_json_atomic


class EvalRecorder:
    def __init__(self):
        self.rows: List[dict] = []

    def add(self, stats) -> None:
        self.rows.append({'episode': stats.episode + 1, 'steps': stats.steps,
                          'reward': round(stats.episode_return, 2),
                          'interventions': stats.interventions,
                          'result': 'SUCCESS' if stats.success else 'FAIL',
                          'outcome': stats.outcome})

    def summary(self) -> dict:
        n = len(self.rows)
        successes = sum(r['result'] == 'SUCCESS' for r in self.rows)
        return {'episodes': n, 'successes': successes,
                'success_rate': successes / n if n else 0.0,
                'mean_steps': sum(r['steps'] for r in self.rows) / n if n else 0.0,
                'mean_return': sum(r['reward'] for r in self.rows) / n if n else 0.0,
                'rows': self.rows}

    def table(self) -> str:
        lines = ['| Episode | Steps | Reward | Result |', '|---------|-------|--------|--------|']
        lines += [f'| {r["episode"]} | {r["steps"]} | {r["reward"]:.2f} | {r["result"]} |'
                  for r in self.rows]
        s = self.summary()
        lines.append(f'success rate {s["successes"]}/{s["episodes"]} = {s["success_rate"]:.0%}, '
                     f'mean steps {s["mean_steps"]:.1f}, mean return {s["mean_return"]:.2f}')
        return '\n'.join(lines)

    def write(self, output_dir, extra: Optional[dict] = None) -> Path:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / 'eval_summary.json'
        write_json_atomic(path, {**self.summary(), **(extra or {})})
        return path
