"""The package layers only point down: hilserl (the shared floor) <- so101_driver,
reward_classifier_node, hilserl_policy (independent of each other) <- hilserl_tools (the `hilserl`
command, process runner, recorder, bag replay). Inside hilserl, its folders point down too:
common <- messages <- configuration <- robot, learning (siblings) <- data <- ros.
Every import counts, including the lazy ones inside functions. And flake8 is clean."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {'hilserl': 0, 'so101_driver': 1, 'reward_classifier_node': 1, 'hilserl_policy': 1,
         'hilserl_tools': 2}
CORE_LAYER = {'common': 0, 'messages': 1, 'configuration': 2, 'robot': 3, 'learning': 3,
              'data': 4, 'ros': 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(source: str, module: str = ''):
    """(line, dotted name) of every import in `source`; relative ones resolved against `module`
    (`from hilserl import data` counts as hilserl.data)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                package = module.split('.')[:-node.level] if module else []
                base = '.'.join(package + ([base] if base else []))
            if base == 'hilserl':  # the names are the folders
                for alias in node.names:
                    yield node.lineno, f'hilserl.{alias.name}'
            elif base:
                yield node.lineno, base


def violations(module: str, source: str, where: str):
    """Imports of `module` that point at its own layer (a sibling) or above."""
    found = []
    package = module.split('.')[0]
    for line, name in imported_modules(source, module):
        other = name.split('.')[0]
        if other not in LAYER or other == package:
            if package == other == 'hilserl':
                found += core_violation(module, name, f'{where}:{line}')
            continue
        if LAYER[other] >= LAYER[package]:
            found.append(f'{where}:{line}: {package} (layer {LAYER[package]}) imports {other} '
                         f'(layer {LAYER[other]})')
    return found


def core_violation(module: str, name: str, where: str):
    own = module.split('.')[1] if module.count('.') else None
    other = name.split('.')[1] if name.count('.') else None
    if own is None or other is None:  # hilserl/__init__.py, or `import hilserl` itself
        return []
    unknown = [f for f in (own, other) if f not in CORE_LAYER]
    if unknown:
        return [f'{where}: hilserl.{unknown[0]} is in no layer of hilserl (CORE_LAYER)']
    if own != other and CORE_LAYER[other] >= CORE_LAYER[own]:
        return [f'{where}: hilserl.{own} (layer {CORE_LAYER[own]}) imports hilserl.{other} '
                f'(layer {CORE_LAYER[other]})']
    return []


def test_no_module_imports_its_own_layer_or_above():
    found = []
    for package in LAYER:
        for path in sorted((ROOT / package).rglob('*.py')):
            found += violations(module_name(path), path.read_text(),
                                str(path.relative_to(ROOT)))
    assert not found, '\n'.join(found)


def test_every_module_of_hilserl_lives_in_a_layered_folder():
    """A module dropped at hilserl/'s top, or a new folder, must be given its place first."""
    loose = [p.name for p in (ROOT / 'hilserl').glob('*.py') if p.name != '__init__.py']
    folders = {p.name for p in (ROOT / 'hilserl').iterdir()
               if p.is_dir() and (p / '__init__.py').exists()}
    assert not loose, f'modules outside a folder of hilserl/: {loose}'
    assert folders == set(CORE_LAYER), folders ^ set(CORE_LAYER)
    for folder in CORE_LAYER:
        init = ROOT / 'hilserl' / folder / '__init__.py'
        doc = ast.get_docstring(ast.parse(init.read_text())) or ''
        assert 'import' in doc.lower(), f'hilserl/{folder}/__init__.py: say what it may import'


def test_the_layer_check_sees_upward_lazy_and_sibling_imports():
    source = ('import numpy\nfrom hilserl.configuration.config import TrainConfig\n'
              'def f():\n    from hilserl_policy.replay_buffer import ReplayBuffer\n'
              'import hilserl_tools.cli\nfrom so101_driver import sts_protocol\n')
    assert sorted(v.split(': ', 1)[1] for v in violations('hilserl.data.x', source, 'x.py')) == [
        'hilserl (layer 0) imports hilserl_policy (layer 1)',
        'hilserl (layer 0) imports hilserl_tools (layer 2)',
        'hilserl (layer 0) imports so101_driver (layer 1)']
    assert len(violations('hilserl_policy.x', source, 'x.py')) == 2    # a sibling, the tools
    assert violations('hilserl_tools.x', source, 'x.py') == []


def test_the_layer_check_sees_upward_and_sideways_imports_inside_hilserl():
    source = ('from hilserl.common.files import write_text_atomic\n'
              'def f():\n    from hilserl.data.bags import read_episode\n'      # upward, lazy
              'from hilserl.learning.task import Streak\n'                       # sideways
              'from hilserl import ros\n'                                         # upward
              'from .kinematics import SO101Kinematics\n'                         # own folder
              'from ..data import demos\n')                                       # upward
    assert sorted(v.split(': ', 1)[1]
                  for v in violations('hilserl.robot.teleop', source, 'x.py')) == [
        'hilserl.robot (layer 3) imports hilserl.data (layer 4)',
        'hilserl.robot (layer 3) imports hilserl.data (layer 4)',
        'hilserl.robot (layer 3) imports hilserl.learning (layer 3)',
        'hilserl.robot (layer 3) imports hilserl.ros (layer 5)']
    assert violations('hilserl.ros.graph', source, 'x.py') == []
    assert violations('hilserl.common.x', 'import hilserl.gadgets.y\n', 'x.py') == [
        'x.py:1: hilserl.gadgets is in no layer of hilserl (CORE_LAYER)']


def test_flake8_is_clean():
    """flake8 with the committed .flake8 (max line 100) over the packages, launch files, tests
    and benchmarks."""
    if shutil.which('flake8') is None and subprocess.run(
            [sys.executable, '-m', 'flake8', '--version'], capture_output=True).returncode:
        pytest.fail('flake8 is not installed: `make setup` installs it (requirements.txt)')
    result = subprocess.run([sys.executable, '-m', 'flake8'], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
