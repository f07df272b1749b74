"""The arm at rest with torque off, however the graph is stopped: the driver node on the pty
STS3215 simulator (the real wire protocol), stopped the ways `ros2 launch` and a terminal stop
it (SIGINT, SIGTERM to the node; SIGHUP takes SIGTERM's path in spin_node) and by the death of
the process that started it (SIGKILL to `ros2 launch` or `hilserl`). Each time the servos end at
the rest pose, torque off. The graph-level half (no process left, bags complete, a final
checkpoint) is test_ros2_launch's and test_process_graph's, on the simulated arm."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from conftest import calibrated_arm_at_home, free_domain_id  # noqa: E402
from hilserl.messages.conventions import JOINT_NAMES  # noqa: E402
from so101_driver.calibration import default_calibration, rad_to_ticks  # noqa: E402
from so101_driver.driver_core import DriverConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_S = 120.0
# The parent stands in for ros2 launch / hilserl: it starts the driver and waits.
PARENT = ('import subprocess, sys; child = subprocess.Popen(sys.argv[1:]); '
          'print(child.pid, flush=True); child.wait()')


def _driver_command(port, calibration):
    return [sys.executable, '-m', 'so101_driver.driver_node', '--ros-args',
            '-p', 'backend:=hardware', '-p', f'port:={port}', '-p', 'bus_timeout_ms:=300.0',
            '-p', f'calibration_file:={calibration}', '-p', 'on_exit:=rest_then_torque_off']


def _torque_and_ticks(sim):
    with sim._lock:
        return ({i: s.get('torque_enable') for i, s in sim.servos.items()},
                {i: s.get('present_position') for i, s in sim.servos.items()})


@pytest.mark.parametrize('how', ['SIGINT', 'SIGTERM', 'parent SIGKILL'])  # SIGHUP: as SIGTERM
def test_every_stop_leaves_the_arm_at_rest_with_torque_off(tmp_path, how):
    sim, calibration = calibrated_arm_at_home(tmp_path)
    cal = default_calibration()  # what the file holds
    env = {**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()), 'PYTHONUNBUFFERED': '1'}
    parent = subprocess.Popen([sys.executable, '-c', PARENT,
                               *_driver_command(sim.port, calibration)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    driver_pid = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:  # up: torque on at every servo
            if set(_torque_and_ticks(sim)[0].values()) == {1}:
                break
            time.sleep(0.2)
        else:
            pytest.fail('the driver never turned torque on')
        # Torque goes on during bring-up, before the node spins: a signal now may come while
        # the node is still being built (that once left torque on), or a moment later
        time.sleep(1.0)
        if how == 'parent SIGKILL':
            parent.kill()
        else:
            os.kill(driver_pid, getattr(signal, how))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f'the driver still runs 60 s after {how}')
        torque, ticks = _torque_and_ticks(sim)
        if how != 'parent SIGKILL':
            parent.wait(timeout=30)
        output = parent.stdout.read() if how != 'parent SIGKILL' else ''
        assert set(torque.values()) == {0}, (torque, output[-3000:])
        rest = DriverConfig().rest_pose_rad
        for k, name in enumerate(JOINT_NAMES[:5]):
            assert abs(ticks[cal[name].id] - rad_to_ticks(name, rest[k], cal[name])) < \
                0.05 / (2 * np.pi / 4096), (name, how)
    finally:
        parent.kill()
        parent.wait()
        try:
            os.kill(driver_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sim.close()
