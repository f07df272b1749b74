"""A lock-out on a real arm (the pty STS3215 simulator): a servo overheats and lets go, the
driver says so once with what to do, the actor pauses the episode (ROS-free: test_actor_core),
and `hilserl torque on` (or the keyboard teleop's `t` key) re-arms once the servo has cooled;
refused, naming the servo, before."""
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip('rclpy')

from conftest import calibrated_arm_at_home, free_domain_id  # noqa: E402
from hilserl_tools import cli  # noqa: E402


def read_lines(stream, lines):
    for line in stream:
        lines.put(line.rstrip())


def wait_for(lines, text, seen, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return line
    pytest.fail(f'{text!r} never came:\n' + '\n'.join(seen[-30:]))


def _start(cmd, env, **kwargs):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)
    lines = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
    return proc, lines


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_t_key_re_arms_after_cooling(tmp_path):
    """The person at the keyboard teleop presses `t`: refused while the servo is hot (the
    servo named in the teleop's log), torque on once it has cooled."""
    sim, _ = calibrated_arm_at_home(tmp_path)
    env = {**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()), 'PYTHONUNBUFFERED': '1'}
    driver, driver_lines = _start(
        [sys.executable, '-m', 'so101_driver.driver_node', '--ros-args',
         '-p', 'backend:=hardware', '-p', f'port:={sim.port}', '-p', 'bus_timeout_ms:=300.0',
         '-p', f'calibration_file:={tmp_path / "cal.json"}', '-p', 'health_period_s:=0.2'], env)
    keyboard, terminal = pty.openpty()   # the person's terminal
    teleop, teleop_lines = _start([sys.executable, '-m', 'so101_driver.teleop_node',
                                   '--ros-args', '-p', 'device:=keyboard'], env, stdin=terminal)
    seen = []
    try:
        wait_for(driver_lines, 'so101_driver up', seen)
        wait_for(teleop_lines, 'teleop up', seen)
        sim.set_temperature(2, 80)
        wait_for(driver_lines, 'arm locked out', seen)
        deadline = time.monotonic() + 120
        line = ''
        while 'refused' not in line and time.monotonic() < deadline:
            os.write(keyboard, b't')  # the torque service may not be discovered yet
            line = wait_for(teleop_lines, 't: ', seen)
        assert 'refused' in line and 'shoulder_lift (id 2)' in line, seen[-10:]
        sim.set_temperature(2, 35)
        os.write(keyboard, b't')
        line = wait_for(teleop_lines, 't: torque on', seen)
        wait_for(driver_lines, 'lock-out over', seen)
    finally:
        _stop(teleop)
        _stop(driver)
        os.close(keyboard)
        os.close(terminal)
        sim.close()


def test_a_lock_out_is_said_once_and_torque_on_re_arms_after_cooling(tmp_path, capsys):
    sim, _ = calibrated_arm_at_home(tmp_path)
    domain = str(free_domain_id())
    env = {**os.environ, 'ROS_DOMAIN_ID': domain, 'PYTHONUNBUFFERED': '1'}
    driver = subprocess.Popen(
        [sys.executable, '-m', 'so101_driver.driver_node', '--ros-args',
         '-p', 'backend:=hardware', '-p', f'port:={sim.port}', '-p', 'bus_timeout_ms:=300.0',
         '-p', f'calibration_file:={tmp_path / "cal.json"}', '-p', 'health_period_s:=0.2'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seen = queue.Queue(), []
    threading.Thread(target=read_lines, args=(driver.stdout, lines), daemon=True).start()
    try:
        wait_for(lines, 'so101_driver up', seen)
        sim.set_temperature(2, 80)     # shoulder_lift over its 70 C limit: it lets go
        line = wait_for(lines, 'arm locked out', seen)
        assert 'shoulder_lift' in line and 'hilserl torque on' in line
        assert cli.main(['torque', 'on', '--domain-id', domain]) == 2   # still hot
        err = capsys.readouterr().err
        assert 'shoulder_lift (id 2)' in err and 'overheat' in err.lower(), err
        sim.set_temperature(2, 35)     # cooled down
        assert cli.main(['torque', 'on', '--domain-id', domain]) == 0
        assert 'torque on' in capsys.readouterr().out
        wait_for(lines, 'lock-out over', seen)
        assert sum('arm locked out' in x for x in seen) == 1   # said once, not every tick
    finally:
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
        sim.close()
    assert cli.main(['torque', 'on', '--domain-id', domain, '--timeout-s', '2']) == 2
    err = capsys.readouterr().err   # a driver just gone may linger in the graph for a moment
    assert 'no driver offers the torque service' in err or 'did not answer' in err, err
