"""The launch files under the real `ros2 launch` (launch, launch_ros, ros2cli), with the package
installed the way colcon installs an ament_python package: the train graph runs episodes and a
terminal Ctrl-C (SIGINT to every process, twice) stops it with every node finishing cleanly, the
open episode's bag finalised and the final checkpoint written; the eval graph evaluates that
checkpoint on its own configuration and ends by itself.

`make test` installs the tooling into .venv from ../shared/ros2-launch where that folder exists
(tests and CI); elsewhere these tests skip and say why. robot_state_publisher and rviz2 are not
installed here: the launch runs without them (one INFO line)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_domain_id

ROOT = Path(__file__).resolve().parents[1]
ROS2 = Path(sys.executable).parent / 'ros2'

pytestmark = pytest.mark.skipif(
    not ROS2.is_file(), reason='ros2 launch tooling not installed in this venv (make test '
    'installs it from ../shared/ros2-launch, which only tests and CI have)')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(environment, work dir): hilserl installed into a prefix on AMENT_PREFIX_PATH."""
    from hilserl.ros.launch_support import install_like_colcon
    work = tmp_path_factory.mktemp('ros2_launch')
    env = {**os.environ, **install_like_colcon(ROOT, work, sys.executable),
           'PATH': os.pathsep.join([str(ROS2.parent), os.environ.get('PATH', '')]),
           'PYTHONUNBUFFERED': '1'}
    # small, quick episodes; the clock does not wait for the learner (pacing is tested elsewhere)
    config = work / 'quick.yaml'
    config.write_text((ROOT / 'config' / 'sim_learn_conv.yaml').read_text().replace(
        'episode_time_s: 10.0', 'episode_time_s: 3.0') + '\nsim:\n  min_updates_per_step: 0.0\n')
    return env, work, config


def _as_from_a_terminal():
    """A shell in a terminal starts launch with SIGHUP at its default; a test run under nohup
    (or a CI daemon) would pass its ignored SIGHUP on, and launch would not see the hang-up."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def launch(env, launch_file, *arguments, **popen):
    return subprocess.Popen([str(ROS2), 'launch', 'hilserl', launch_file, *arguments],
                            env={**env, 'ROS_DOMAIN_ID': str(free_domain_id())},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_as_from_a_terminal, **popen)


def finish(proc, timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f'ros2 launch did not finish in {timeout_s} s:\n{out[-3000:]}')
    return out


def test_train_launch_runs_and_a_terminal_ctrl_c_keeps_everything(installed):
    env, work, config = installed
    run_dir = work / 'train'
    proc = launch(env, 'train.launch.py', 'num_episodes:=0', f'run_dir:={run_dir}',
                  f'config:={config}')
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        recording = sorted((run_dir / 'episodes').glob('episode_*'))
        if len(recording) >= 3 and not (recording[-1] / 'episode.json').exists():
            break  # two episodes ended and the third is being recorded
        time.sleep(0.5)
    assert proc.poll() is None, 'the graph stopped on its own'
    os.killpg(proc.pid, signal.SIGINT)   # the terminal's Ctrl-C reaches every process
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)   # ... and a second one (or launch's forwarded one)
    out = finish(proc, 120)
    for node in ('so101_driver', 'gripper_camera', 'teleop', 'sac_actor', 'sac_learner',
                 'episode_recorder'):
        assert f'{node} up' in out, node
    assert out.count('process has finished cleanly') == 6, out[-3000:]
    assert 'robot_state_publisher is not installed' in out
    assert 'episode 0 ended' in out and 'episode 1 ended' in out
    assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out[-3000:]
    episodes = sorted((run_dir / 'episodes').glob('episode_*'))
    assert len(episodes) >= 3 and all((e / 'bag' / 'metadata.yaml').is_file() and
                                      (e / 'episode.json').is_file() for e in episodes)
    assert 'final checkpoint' in out and list((run_dir / 'checkpoints').glob('[0-9]*'))


def test_train_launch_with_two_arms_ends_when_both_have_run_their_episodes(installed):
    """robots:=2: each arm's nodes in robot_0 / robot_1 (their own clocks and bags), one
    learner; the launch ends by itself once both actors have run num_episodes."""
    from hilserl.data.bags import complete_episodes
    env, work, config = installed
    run_dir = work / 'two_arms'
    proc = launch(env, 'train.launch.py', 'robots:=2', 'num_episodes:=1',
                  f'run_dir:={run_dir}', f'config:={config}')
    out = finish(proc, 400)
    assert proc.returncode == 0, out[-3000:]
    for robot in ('robot_0', 'robot_1'):
        assert f'[{robot}.sac_actor]: episode 0 ended' in out, out[-3000:]
        assert [meta['episode'] for _, meta in complete_episodes(run_dir / robot)] == [0]
    assert out.count('sac_learner up') == 1 and 'Traceback' not in out, out[-3000:]


def test_the_backend_argument_beats_the_robot_file(installed):
    """robot_config:= the real arm's file (backend: hardware, a serial port, /dev/video0) with
    backend:=sim runs the simulated arm and camera, and says that the file was overridden."""
    env, work, config = installed
    run_dir = work / 'sim_with_arm_file'
    proc = launch(env, 'train.launch.py', 'backend:=sim', 'num_episodes:=1',
                  f'robot_config:={ROOT / "config" / "so101_follower.yaml"}',
                  f'run_dir:={run_dir}', f'config:={config}')
    out = finish(proc, 400)
    assert proc.returncode == 0, out[-3000:]
    assert 'says backend: hardware; the graph runs backend sim as asked' in out, out[-3000:]
    assert 'episode 0 ended' in out and 'calibration' not in out.lower(), out[-3000:]
    assert 'Traceback' not in out, out[-3000:]


def _session_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize('sig,to_group', [
    (signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, False),
    (signal.SIGTERM, True), (signal.SIGHUP, True), (signal.SIGKILL, False)],
    ids=['TERM-launch', 'HUP-launch', 'INT-launch', 'TERM-group', 'HUP-group', 'KILL-launch'])
def test_every_way_of_stopping_ends_like_a_ctrl_c(installed, sig, to_group):
    """A signal to the launch process alone (kill, systemd, a closing IDE; SIGKILL) or to its
    whole process group (a closed terminal): no process is left, every bag is complete, and a
    final checkpoint is written after the signal. (SIGINT to the group is the Ctrl-C test.)"""
    env, work, config = installed
    run_dir = work / f'stop_{sig.name}_{"group" if to_group else "launch"}'
    proc = launch(env, 'train.launch.py', 'num_episodes:=0', f'run_dir:={run_dir}',
                  f'config:={config}')
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        recording = sorted((run_dir / 'episodes').glob('episode_*'))
        if len(recording) >= 2 and not (recording[-1] / 'episode.json').exists():
            break  # one episode ended, the next one is being recorded
        time.sleep(0.5)
    assert proc.poll() is None, 'the graph stopped on its own'
    signalled_at = time.time()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.communicate(timeout=120)   # launch itself (its output is not needed here)
    deadline = time.monotonic() + 120
    while not _session_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session_gone(proc.pid)
    if not left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert left, f'nodes still running 120 s after {sig.name}'
    episodes = sorted((run_dir / 'episodes').glob('episode_*'))
    assert len(episodes) >= 2
    for episode in episodes:
        assert (episode / 'bag' / 'metadata.yaml').is_file(), episode
        assert (episode / 'episode.json').is_file(), episode
    checkpoints = sorted((run_dir / 'checkpoints').glob('[0-9]*'))
    assert checkpoints and checkpoints[-1].stat().st_mtime >= signalled_at - 1.0


def test_a_keystore_puts_every_node_in_its_enclave_and_none_runs_unsecured(installed):
    """keystore:= sets ROS_SECURITY_* and each node's --enclave: rcl finds each node's folder
    in the keystore. This Fast DDS has no security plugins (and the folders no keys), so every
    node refuses to start, and the launch ends; a keystore without the enclaves is refused before
    any node starts, naming them."""
    from hilserl.ros.graph import GraphArgs
    from hilserl.ros.security import secured_nodes
    env, work, config = installed
    keystore = work / 'keystore'
    (keystore / 'enclaves').mkdir(parents=True)
    arguments = (f'keystore:={keystore}', f'run_dir:={work / "secured"}', f'config:={config}')
    out = finish(launch(env, 'train.launch.py', *arguments), 120)
    assert 'has no enclave /hilserl/train/so101_driver' in out and ' up:' not in out, out[-3000:]
    nodes = secured_nodes(GraphArgs(config=str(config)))
    for spec in nodes:
        (keystore / 'enclaves' / spec.enclave.lstrip('/')).mkdir(parents=True)
    out = finish(launch(env, 'train.launch.py', *arguments), 300)
    for spec in nodes:  # every node's command line (shown as it dies) names its enclave
        assert f'--enclave {spec.enclave} ' in out, spec.name
    # the actor's exit ends the launch: it got as far as its keys (slower nodes may be stopped
    # before they load rclpy)
    assert f'Found security directory: {keystore}/enclaves/hilserl/train/sac_actor' in out
    assert re.search(r'\[sac_actor-\d+\]: process has died \[pid \d+, exit code 1,', out)
    assert ' up:' not in out and 'no robot_state_publisher or RViz' in out, out[-3000:]


def test_eval_launch_evaluates_a_checkpoint(installed):
    env, work, _ = installed
    checkpoints = sorted((work / 'train' / 'checkpoints').glob('[0-9]*'))
    if not checkpoints:
        pytest.skip('needs the checkpoint of the train launch test')
    run_dir = work / 'eval'
    # no config: the eval graph takes the checkpoint's own (image size, networks)
    proc = launch(env, 'eval.launch.py', f'checkpoint:={checkpoints[-1]}', 'num_episodes:=1',
                  f'run_dir:={run_dir}')
    out = finish(proc, 600)
    assert proc.returncode == 0, out[-3000:]
    assert (run_dir / 'eval' / 'eval_summary.json').is_file(), out[-3000:]
    assert 'sac_learner' not in out and 'Traceback' not in out
    shutil.rmtree(work / 'build', ignore_errors=True)
