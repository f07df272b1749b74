"""`hilserl find-workspace` on the pty STS3215 bus simulator (the real wire protocol): the arm
goes limp, a person moves it through three poses (the simulator's move_by_hand refuses a servo
that holds torque), and the box of those poses is written into the training config."""
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hilserl.configuration.config import load_train_config
from hilserl.messages.conventions import JOINT_NAMES
from hilserl.robot.kinematics import SO101Kinematics
from hilserl_tools import cli
from hilserl_tools.find_workspace import ROUND_M, WorkspaceSweep
from so101_driver.calibration import default_calibration, rad_to_ticks, save_calibration
from so101_driver.ee_control import home_joint_goal
from so101_driver.sts_simulator import SimulatedBus

ROOT = Path(__file__).resolve().parents[1]


def poses(kin):
    """Home (the config's reset TCP) and two other top-down poses around it."""
    return [home_joint_goal(kin, xyz, 0.3) for xyz in
            ((0.25, 0.0, 0.07), (0.18, -0.08, 0.04), (0.30, 0.09, 0.15))]


@pytest.fixture()
def arm(tmp_path):
    calibration = default_calibration()
    save_calibration(calibration, tmp_path / 'follower.json')
    home = poses(SO101Kinematics())[0]   # the arm rests at home when the owner starts
    bus = SimulatedBus(positions={calibration[n].id: rad_to_ticks(n, v, calibration[n])
                                  for n, v in zip(JOINT_NAMES, home)},
                       calibration=calibration)   # the servos hold the file's calibration
    robot = tmp_path / 'robot.yaml'
    robot.write_text(yaml.safe_dump({'/**/so101_driver': {'ros__parameters': {
        'port': bus.port, 'calibration_file': str(tmp_path / 'follower.json'),
        'bus_timeout_ms': 300.0}}}))
    config = tmp_path / 'train.yaml'
    shutil.copy(ROOT / 'config' / 'train.yaml', config)
    yield bus, calibration, robot, config
    bus.close()


def move_through(bus, calibration, joint_sets, hold_s=0.8):
    """A person at the limp arm: each pose in turn, once the arm lets go."""
    deadline = time.monotonic() + 60
    while any(s.get('torque_enable') for s in bus.servos.values()) or bus.packets_seen < 8:
        assert time.monotonic() < deadline, 'the arm never went limp'
        time.sleep(0.05)
    for q in joint_sets:
        for name, value in zip(JOINT_NAMES, q):
            bus.move_by_hand(calibration[name].id, rad_to_ticks(name, value, calibration[name]))
        # held until the command has read it a few times (not a fixed time: a loaded machine)
        assert bus.wait_for_packets(4, deadline), 'the command stopped reading the arm'
        time.sleep(hold_s)


def test_the_swept_box_is_written_into_the_config(arm, capsys, monkeypatch):
    """The person sweeps, then presses Enter (a pipe as the terminal): no time bound, so a
    loaded machine cannot cut the sweep short."""
    import os
    bus, calibration, robot, config = arm
    kin = SO101Kinematics()
    joint_sets = poses(kin)
    read_end, write_end = os.pipe()
    monkeypatch.setattr('sys.stdin', os.fdopen(read_end, 'r'))

    def sweep_then_enter():
        move_through(bus, calibration, joint_sets)
        os.write(write_end, b'\n')

    person = threading.Thread(target=sweep_then_enter)
    person.start()
    code = cli.main(['find-workspace', '--robot-config', str(robot), '--config', str(config)])
    person.join()
    os.close(write_end)
    assert code == 0, capsys.readouterr()
    task = load_train_config(config).task
    tcps = np.array([kin.fk(q[:5])[:3, 3] for q in joint_sets])
    low, high = np.array(task.workspace_min_m), np.array(task.workspace_max_m)
    # every pose inside, edges within the rounding (+ the encoder's 0.09 deg ticks) of the poses
    assert np.all(low <= tcps.min(0) + 1e-3) and np.all(high >= tcps.max(0) - 1e-3)
    assert np.all(tcps.min(0) - low < ROUND_M + 3e-3)
    assert np.all(high - tcps.max(0) < ROUND_M + 3e-3)
    assert not any(s.get('torque_enable') for s in bus.servos.values())  # never took torque
    assert 'written to' in capsys.readouterr().out


def test_a_box_without_the_home_pose_writes_nothing_and_no_arm_is_one_line(arm, capsys):
    from hilserl.configuration.yaml_edit import set_values
    bus, calibration, robot, config = arm
    set_values(config, {'task.reset_tcp_xyz_m': [0.15, 0.1, 0.05]})  # a home the sweep misses
    before = config.read_text()
    away = [home_joint_goal(SO101Kinematics(), (0.32, 0.09, 0.15), 0.3)]
    person = threading.Thread(target=move_through, args=(bus, calibration, away, 0.2))
    person.start()
    assert cli.main(['find-workspace', '--robot-config', str(robot), '--config', str(config),
                     '--seconds', '3']) == 2
    person.join()
    err = capsys.readouterr().err.strip()
    assert 'leaves out the home TCP' in err and '\n' not in err and config.read_text() == before
    silent = robot.with_name('nowhere.yaml')
    silent.write_text(robot.read_text().replace(bus.port, str(robot.parent / 'no_such_port')))
    assert cli.main(['find-workspace', '--robot-config', str(silent), '--config', str(config),
                     '--seconds', '1']) == 2
    err = capsys.readouterr().err.strip()
    assert 'cannot open serial port' in err and '\n' not in err


def test_the_sweep_keeps_extremes_and_refuses_bad_readings():
    sweep = WorkspaceSweep()
    q = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0, 0.3])
    sweep.add(q)
    sweep.add(q + np.array([0.3, 0, 0, 0, 0, 0.5]))
    assert sweep.joint_max[0] == pytest.approx(0.3) and sweep.joint_min[5] == pytest.approx(0.3)
    low, high = sweep.box(z_floor_m=0.5)
    assert low[2] == 0.5 and all(lo <= hi for lo, hi in zip(low[:2], high[:2]))
    with pytest.raises(ValueError):
        sweep.add([0.0, np.nan, 0, 0, 0, 0])
    assert 'tcp z (m)' in sweep.table()
