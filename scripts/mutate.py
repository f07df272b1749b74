"""Mutation run (mutmut 2.5.1) over the learning logic: `make mutate` (not part of `make test`).

Usage: python scripts/mutate.py [--fresh] [task episode replay sac guard]   (default: all but guard)

The working tree's files (tracked and untracked, not ignored) are copied, per module, to
build/mutate/src_<module>, and mutmut mutates that copy: the checkout's own modules are never
touched, even when a run is interrupted. Each module runs against its own fast tests (pytest -x).
replay.py is restricted to storing, sampling, RLPD mixing and the whole-buffer save, sac.py to the
losses and the Polyak step (a mutmut_config.py pre_mutation hook skips the other lines: see
MODULES); on two shared cores each torch-importing test run costs 5-15 s per mutant.
Per module, the survivors' diffs go to build/mutate/<module>_survivors.txt; the score table goes
to build/mutate/scores.txt. The mutmut cache is kept (build/mutate/<module>.mutmut-cache), so a
rerun tests only what was not killed before; --fresh starts from nothing.
Score = killed (slow or timed-out kills included) / mutants tested; skipped ones do not count.

`guard` (not mutmut): the learning regression guard, test/test_learning_guard.py, against the
named breakages of GUARD_MUTATIONS (the terminal mask, the discount, the target network), each
applied alone to its own copy of the tree (build/mutate/guard_<name>) with the guard run there;
the unbroken copy is run first and must pass. Table: build/mutate/guard.txt.
"""
from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'build' / 'mutate'
PY = sys.executable
PYTEST = 'import sys, pytest; sys.exit(1 if pytest.main(sys.argv[1:]) else 0)'

# module -> (file, pytest arguments, functions to mutate (None: the whole file))
MODULES = {
    'task': ('hilserl/learning/task.py', ['test/test_task.py', 'test/test_episode.py'], None),
    'episode': ('hilserl_policy/episode.py', ['test/test_episode.py'], None),
    'replay': ('hilserl_policy/replay_buffer.py',
               ['test/test_replay_buffer.py', 'test/test_checkpoint_disk.py', 'test/test_sac.py',
                '-k', 'replay_buffer or incremental or buffer or rlpd or next_image'
                ' or interventions_land or bad_transitions or channels_last'],
               ['ImageStore.__setitem__', 'ImageStore.__getitem__', 'concatenate_batches',
                'ReplayBuffer.add', 'ReplayBuffer.sample', 'ReplayBuffer._gather',
                'ReplayBuffer.all', 'ReplayBuffer._order', 'ReplayBuffer.save',
                'sample_mixed']),
    'sac': ('hilserl_policy/sac.py',
            ['test/test_sac.py', '-k', 'td_target or pessimistic or terminated_stops or polyak'
             ' or temperature or update or bc_term or cached_and_direct or backup_entropy'
             ' or grasp or actor_loss'],
            ['SAC.critic_loss', 'SAC.grasp_critic_loss', 'SAC.actor_loss',
             'SAC.temperature_loss', 'polyak_update']),
}

GUARD_TEST = 'test/test_learning_guard.py'
# name -> (file, the exact text, what it becomes): each text occurs once in its file
GUARD_MUTATIONS = {
    'terminal-mask': ('hilserl_policy/sac.py',
                      'td_target = reward + cfg.discount * (1.0 - terminated) * next_v',
                      'td_target = reward + cfg.discount * next_v'),
    'discount': ('hilserl_policy/sac.py',
                 'td_target = reward + cfg.discount * (1.0 - terminated) * next_v',
                 'td_target = reward + (1.0 - terminated) * next_v'),
    'target-network': ('hilserl_policy/sac.py',
                       '            polyak_update(self.critic, self.critic_target, self.cfg.tau)\n',
                       ''),
}

HOOK = '''import json
import os

_LINES = json.loads(os.environ.get('MUTATE_LINES', '{}'))


def pre_mutation(context):
    ranges = _LINES.get(os.path.normpath(context.filename))
    if ranges is None:
        return
    line = context.current_line_index + 1
    if not any(first <= line <= last for first, last in ranges):
        context.skip = True
'''


def function_lines(path: Path, names) -> list:
    """[first, last] line ranges of the named functions ('Class.method' or 'function')."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f'{node.name}.{item.name}'] = item
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = node
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f'{path}: no function {missing}')
    return [[found[n].lineno, found[n].end_lineno] for n in names]


def copy_tree(src: Path) -> None:
    if src.exists():
        shutil.rmtree(src)
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in files:
        source = ROOT / name
        if name.startswith(('docs/', 'build/')) or not source.is_file():
            continue
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (src / 'mutmut_config.py').write_text(HOOK)


def counts(cache: Path) -> dict:
    with sqlite3.connect(cache) as db:
        rows = db.execute('SELECT status, COUNT(*) FROM Mutant GROUP BY status').fetchall()
    return dict(rows)


def survivors(cache: Path) -> list:
    with sqlite3.connect(cache) as db:
        return [r[0] for r in db.execute(
            "SELECT id FROM Mutant WHERE status = 'bad_survived' ORDER BY id").fetchall()]


def run_module(name: str, fresh: bool) -> dict:
    path, tests, functions = MODULES[name]
    src = OUT / f'src_{name}'
    copy_tree(src)
    cache = src / '.mutmut-cache'
    saved = OUT / f'{name}.mutmut-cache'
    if saved.exists() and not fresh:
        # mutmut keeps a killed mutant killed when tests are added and re-tests the rest (and
        # any mutant of a changed line): a rerun after new tests costs only the survivors
        shutil.copy2(saved, cache)
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE='1',
               MUTATE_LINES=json.dumps(
                   {path: function_lines(src / path, functions)} if functions else {}))
    # mutmut 2.x counts only exit status 1 as killed: a mutant that breaks the import (pytest
    # exit 2, collection error) would pass for a survivor, so every failure becomes 1
    runner = shlex.join([PY, '-c', PYTEST, '-x', '-q', '--assert=plain', '-p', 'no:cacheprovider',
                         *tests])
    start = time.monotonic()
    subprocess.run([PY, '-m', 'mutmut', 'run', '--paths-to-mutate', path, '--tests-dir', 'test',
                    '--runner', runner, '--simple-output', '--no-progress', '-b', '20'],
                   cwd=src, env=env)
    elapsed = time.monotonic() - start
    status = counts(cache)
    # suspicious: the tests failed, only slowly; timeout: killed by the time limit
    killed = sum(status.get(k, 0) for k in ('ok_killed', 'ok_suspicious', 'bad_timeout'))
    survived = status.get('bad_survived', 0)
    tested = killed + survived
    with open(OUT / f'{name}_survivors.txt', 'w') as f:
        for mutant in survivors(cache):
            diff = subprocess.run([PY, '-m', 'mutmut', 'show', str(mutant)], cwd=src, env=env,
                                  capture_output=True, text=True).stdout
            f.write(f'--- mutant {mutant}\n{diff}\n')
    shutil.copy2(cache, OUT / f'{name}.mutmut-cache')
    return {'module': path, 'killed': killed, 'survived': survived, 'tested': tested,
            'skipped': status.get('skipped', 0), 'untested': status.get('untested', 0),
            'score': killed / tested if tested else float('nan'), 'seconds': elapsed}


def run_guard() -> str:
    """The learning guard on an unbroken copy, then on one copy per GUARD_MUTATIONS entry:
    a table of (mutation, guard result, seconds, the failed assertion's first line)."""
    rows = []
    for name in ['none', *GUARD_MUTATIONS]:
        src = OUT / f'guard_{name}'
        copy_tree(src)
        if name != 'none':
            path, old, new = GUARD_MUTATIONS[name]
            text = (src / path).read_text()
            if text.count(old) != 1:
                raise SystemExit(f'{path}: the text of mutation {name!r} occurs '
                                 f'{text.count(old)} times, not once: update GUARD_MUTATIONS')
            (src / path).write_text(text.replace(old, new))
        start = time.monotonic()
        result = subprocess.run([PY, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
                                 GUARD_TEST], cwd=src, capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(src),
                                         PYTHONDONTWRITEBYTECODE='1'))
        failed = [line for line in result.stdout.splitlines() if line.startswith('E ')]
        verdict = 'passes' if result.returncode == 0 else 'FAILS'
        rows.append(f'{name:16} {verdict:7} {time.monotonic() - start:5.0f}s  '
                    f'{failed[0][2:].strip()[:200] if failed else ""}')
        print(rows[-1], flush=True)
    header = f'{"mutation":16} {"guard":7} {"time":>6}  first failed assertion'
    table = '\n'.join([header, *rows])
    (OUT / 'guard.txt').write_text(table + '\n')
    return table


def main(argv) -> int:
    fresh = '--fresh' in argv
    names = [a for a in argv if a != '--fresh'] or list(MODULES)
    unknown = [n for n in names if n not in MODULES and n != 'guard']
    if unknown:
        raise SystemExit(f'unknown module(s) {unknown}; choose from {[*MODULES, "guard"]}')
    OUT.mkdir(parents=True, exist_ok=True)
    if 'guard' in names:
        print(run_guard())
        names = [n for n in names if n != 'guard']
        if not names:
            return 0
    results = [run_module(name, fresh) for name in names]
    lines = [f'{"module":28} {"killed":>6} {"tested":>6} {"skipped":>7} {"score":>7} {"time":>7}']
    for r in results:
        lines.append(f'{r["module"]:28} {r["killed"]:6d} {r["tested"]:6d} {r["skipped"]:7d} '
                     f'{100 * r["score"]:6.1f}% {r["seconds"]:6.0f}s')
    killed, tested = sum(r['killed'] for r in results), sum(r['tested'] for r in results)
    lines.append(f'{"total":28} {killed:6d} {tested:6d} {"":7} '
                 f'{100 * killed / max(tested, 1):6.1f}%')
    table = '\n'.join(lines)
    (OUT / 'scores.txt').write_text(table + '\n')
    print(table)
    print(f'survivor diffs: {OUT}/<module>_survivors.txt')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
