"""The ROS seam, by folder: in hilserl/ only hilserl/ros may import rclpy or launch; in the node
packages only modules named *node.py may import rclpy. Every other module is imported with rclpy,
launch and launch_ros blocked, and the core's sources are read for any such import, lazy ones
included."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_PACKAGES = ['so101_driver', 'hilserl_policy', 'reward_classifier_node', 'hilserl_tools']
ROS_GLUE = 'hilserl.ros'          # the one folder of the core's package that may use rclpy
BLOCKED = ('rclpy', 'launch', 'launch_ros')


def ros_free_modules():
    names = ['hilserl']
    for info in pkgutil.walk_packages([str(ROOT / 'hilserl')], prefix='hilserl.'):
        if info.name != ROS_GLUE and not info.name.startswith(ROS_GLUE + '.'):
            names.append(info.name)
    for package in NODE_PACKAGES:
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages([str(ROOT / package)],
                                                              prefix=package + '.')
                  if not info.name.endswith('node')]
    return names


def import_blocked(module: str) -> subprocess.CompletedProcess:
    code = (
        'import sys\n'
        'class Block:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        f'        if name.split(".")[0] in {BLOCKED!r}:\n'
        "            raise ImportError('blocked: ' + name)\n"
        'sys.meta_path.insert(0, Block())\n'
        f'import {module}\n'
    )
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize('module', ros_free_modules())
def test_module_imports_without_rclpy(module):
    result = import_blocked(module)
    assert result.returncode == 0, result.stderr[-2000:]


def ros_imports(source: str):
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            if name.split('.')[0] in BLOCKED:
                yield node.lineno, name


def test_no_core_module_imports_rclpy_or_launch_even_lazily():
    found = [f'{path.relative_to(ROOT)}:{line}: imports {name}'
             for path in sorted((ROOT / 'hilserl').rglob('*.py'))
             if 'ros' not in path.relative_to(ROOT / 'hilserl').parts[:-1]
             for line, name in ros_imports(path.read_text())]
    assert not found, '\n'.join(found)


def test_the_seam_sees_ros_glue_and_lazy_imports():
    assert 'hilserl.ros.node' not in ros_free_modules()
    assert 'hilserl.messages.conventions' in ros_free_modules()
    assert 'hilserl_policy.actor_node' not in ros_free_modules()
    assert list(ros_imports('def f():\n    from launch.actions import Shutdown\n')) == [
        (2, 'launch.actions')]
    result = import_blocked('hilserl.ros.node')
    assert result.returncode != 0 and 'blocked: rclpy' in result.stderr
