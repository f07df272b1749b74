"""Only modules named *node.py may import rclpy: import every other module with rclpy blocked."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ['hilserl', 'so101_driver', 'hilserl_policy', 'reward_classifier_node', 'hilserl_tools']


def ros_free_modules():
    names = []
    for package in PACKAGES:
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=package + '.'):
            if not info.name.endswith('node'):  # hilserl.node: the nodes' rclpy helpers
                names.append(info.name)
    return PACKAGES + names


@pytest.mark.parametrize('module', ros_free_modules())
def test_module_imports_without_rclpy(module):
    code = (
        'import sys\n'
        'class Block:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        "        if name == 'rclpy' or name.startswith('rclpy.'):\n"
        "            raise ImportError('rclpy is blocked: ' + name)\n"
        'sys.meta_path.insert(0, Block())\n'
        f'import {module}\n'
    )
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_block_really_blocks():
    code = ('import sys\nclass B:\n    def find_spec(self, n, p=None, t=None):\n'
            "        if n == 'rclpy': raise ImportError('blocked')\n"
            'sys.meta_path.insert(0, B())\nimport hilserl.node\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and 'blocked' in result.stderr
