"""Robot parameter files apply under any namespace (`/**/node:` keys), so `namespace:=arm1`
keeps the hardware backend, its port and the camera's rate instead of silently falling back to
the defaults."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

from hilserl.ros.graph import GraphArgs, build_graph  # noqa: E402
from hilserl_tools.process_graph import node_command  # noqa: E402

from conftest import free_domain_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_node(cmd, seconds: float) -> str:
    env = {**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()), 'PYTHONUNBUFFERED': '1'}
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds,
                             cwd=ROOT)
        return out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:  # the node kept running: what did it say?
        return (exc.stdout or b'').decode() + (exc.stderr or b'').decode()


def test_hardware_file_under_a_namespace_opens_the_configured_port(tmp_path):
    follower = (ROOT / 'config' / 'so101_follower.yaml').read_text()
    robot = tmp_path / 'arm1.yaml'
    robot.write_text(follower.replace('/dev/ttyACM0', str(tmp_path / 'no_such_port')))
    from so101_driver.calibration import default_calibration, save_calibration
    save_calibration(default_calibration(), tmp_path / 'cal.json')
    nodes = build_graph(GraphArgs(mode='eval', backend='hardware', checkpoint='x',
                                  robot_config=str(robot), teleop='none',
                                  success_source='classifier', classifier_model='m',
                                  namespace='arm1'))
    driver = next(n for n in nodes if n.name == 'so101_driver')
    cmd = node_command(driver, tmp_path / 'params', 'arm1')
    out = run_node(cmd + ['-p', f'calibration_file:={tmp_path / "cal.json"}'], 60)
    assert 'no_such_port' in out, out[-2000:]   # the file's port, not the default, under /arm1


def test_camera_rate_from_the_file_under_a_namespace(tmp_path):
    cmd = [sys.executable, '-m', 'so101_driver.camera_node', '--ros-args', '-r',
           '__ns:=/arm1', '--params-file', str(ROOT / 'config' / 'sim_robot.yaml')]
    out = run_node(cmd, 20)
    assert 'gripper_camera up: backend=sim' in out and '@ 15 Hz' in out, out[-2000:]


def test_two_namespaced_graphs_on_one_domain_keep_apart(tmp_path):
    """Each graph has its own simulated clock (/clock remapped into the namespace), its own
    episodes and nothing of the other's."""
    from hilserl.data.bags import complete_episodes
    domain = str(free_domain_id())
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    procs = {ns: subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', 'record', '--episodes', '2', '--mix',
         'expert:1', '--namespace', ns, '--seed', str(i), '--output', str(tmp_path / ns),
         '--domain-id', domain], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i, ns in enumerate(('arm1', 'arm2'))}
    outs = {ns: p.communicate(timeout=300)[0] for ns, p in procs.items()}
    for ns, proc in procs.items():
        assert proc.returncode == 0, outs[ns][-2000:]
        episodes = complete_episodes(tmp_path / ns)
        assert sorted(p.name for p, _ in episodes) == ['episode_000000', 'episode_000001']
        assert all(m['steps'] < 100 and m['success'] for _, m in episodes), outs[ns][-2000:]
