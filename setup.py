"""ament_python package `hilserl` (colcon on a ROS 2 distro, or `pip install -e .` in .venv)."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'hilserl'


def tree(src_dir):
    """data_files entries installing every file below src_dir under share/hilserl/src_dir."""
    entries = []
    for root, _dirs, files in os.walk(src_dir):
        if files:
            entries.append((os.path.join('share', PACKAGE, root),
                            [os.path.join(root, f) for f in files]))
    return entries


# One console script per node, plus the `hilserl` command for machines without a ROS 2 distro.
NODE_SCRIPTS = [
    'so101_driver = so101_driver.driver_node:main',
    'gripper_camera = so101_driver.camera_node:main',
    'teleop = so101_driver.teleop_node:main',
    'keyboard_teleop = so101_driver.teleop_node:keyboard_main',
    'reward_classifier = reward_classifier_node.classifier_node:main',
    'sac_actor = hilserl_policy.actor_node:main',
    'sac_learner = hilserl_policy.learner_node:main',
    'episode_recorder = hilserl_tools.recorder_node:main',
    'bag_replay = hilserl_tools.bag_replay_node:main',
]

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'scripts']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py') + glob('launch/*.py')),
        ('share/' + PACKAGE + '/config',
         glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml')),
    ] + tree('urdf'),
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=True,
    maintainer='hilserl maintainers',
    maintainer_email='maintainers@hilserl.invalid',
    description='HIL-SERL for the SO-101 arm on ROS 2',
    license='Apache-2.0',
    entry_points={
        'console_scripts': NODE_SCRIPTS + ['hilserl = hilserl_tools.cli:main'],
    },
)
