"""The package layers only point down: hilserl (types, codecs, config, conventions, kinematics,
image ops, augmentation) <- so101_driver, reward_classifier_node, hilserl_policy (independent of
each other) <- hilserl_tools (the `hilserl` command, process runner, recorder, bag replay).
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


def imported_packages(source: str):
    """(line, top-level package) of every import in `source` that names one of ours."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split('.')[0]
            if top in LAYER:
                yield node.lineno, top


def violations(package: str, source: str, where: str):
    return [f'{where}:{line}: {package} (layer {LAYER[package]}) imports {other} '
            f'(layer {LAYER[other]})'
            for line, other in imported_packages(source)
            if other != package and LAYER[other] >= LAYER[package]]


def test_no_module_imports_its_own_layer_or_above():
    found = []
    for package in LAYER:
        for path in sorted((ROOT / package).rglob('*.py')):
            found += violations(package, path.read_text(), str(path.relative_to(ROOT)))
    assert not found, '\n'.join(found)


def test_the_layer_check_sees_upward_lazy_and_sibling_imports():
    source = ('import numpy\nfrom hilserl.config import TrainConfig\n'
              'def f():\n    from hilserl_policy.replay_buffer import ReplayBuffer\n'
              'import hilserl_tools.cli\nfrom so101_driver import sts_protocol\n')
    assert sorted(v.split(': ', 1)[1] for v in violations('hilserl', source, 'x.py')) == [
        'hilserl (layer 0) imports hilserl_policy (layer 1)',
        'hilserl (layer 0) imports hilserl_tools (layer 2)',
        'hilserl (layer 0) imports so101_driver (layer 1)']
    assert len(violations('hilserl_policy', source, 'x.py')) == 2    # a sibling, the tools
    assert violations('hilserl_tools', source, 'x.py') == []


def test_flake8_is_clean():
    """flake8 with the committed .flake8 (max line 100) over the packages, launch files, tests
    and benchmarks."""
    if shutil.which('flake8') is None and subprocess.run(
            [sys.executable, '-m', 'flake8', '--version'], capture_output=True).returncode:
        pytest.fail('flake8 is not installed: `make setup` installs it (requirements.txt)')
    result = subprocess.run([sys.executable, '-m', 'flake8'], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
