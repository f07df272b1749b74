"""`hilserl calibrate` on the pty STS3215 simulator (the real wire protocol), the calibration file
in LeRobot's format and place, and the driver's refusal to bring up servos whose EEPROM holds
another calibration than its file (or, allowed, writing it and saying so). ROS-free."""
import io
import json
import sys
import time

import pytest

from hilserl.messages.conventions import JOINT_NAMES
from hilserl_tools import cli
from hilserl_tools.calibrate import RangeSweep, homing_offsets, run_calibrate
from so101_driver.backend import BackendError
from so101_driver.calibration import (FIELDS, MotorCalibration, default_calibration,
                                      default_calibration_path, load_calibration,
                                      save_calibration)
from so101_driver.feetech_bus import FeetechBus
from so101_driver.hardware_backend import HardwareBackend
from so101_driver.sts_simulator import SimulatedBus

TIMEOUT_MS = 300   # the simulator shares a loaded machine
IDS = {j: k + 1 for k, j in enumerate(JOINT_NAMES)}
# where the owner leaves each joint at "mid-range" (encoder ticks), and how far they sweep it
MID = {'shoulder_pan': 2100, 'shoulder_lift': 1900, 'elbow_flex': 2200, 'wrist_flex': 2000,
       'wrist_roll': 3000, 'gripper': 1600}
SWEEP = {'shoulder_pan': (-900, 950), 'shoulder_lift': (-1100, 1000), 'elbow_flex': (-1000, 900),
         'wrist_flex': (-950, 1000), 'wrist_roll': (-400, 400), 'gripper': (-20, 1200)}


@pytest.fixture()
def sim():
    bus = SimulatedBus(positions={IDS[j]: MID[j] for j in JOINT_NAMES})
    yield bus
    bus.close()


class Owner:
    """The person at the arm, as lines on stdin: Enter with the arm mid-range, the answer to the
    confirmation, and (once the offsets are on the servos) a sweep of every joint by hand, then
    Enter. `still`: joints they forget to move."""

    def __init__(self, sim, answer='y', still=(), hold_s=0.4):
        self.sim, self.answer, self.still, self.hold_s = sim, answer, set(still), hold_s
        # no sweep after a refusal: the command is over, nobody reads on
        self.script = iter(['\n', answer + '\n'] + ([self._sweep] if answer == 'y' else []))

    def _sweep(self):
        expected = {IDS[j]: MID[j] - 2047 for j in JOINT_NAMES}
        deadline = time.monotonic() + 60
        while any(self.sim.servos[i].get('homing_offset') != v for i, v in expected.items()):
            if time.monotonic() > deadline:   # the command's own checks report what failed
                return ''
            time.sleep(0.05)
        self._held()   # the sweep's first reading
        for side in (0, 1):
            for joint in JOINT_NAMES:
                if joint not in self.still:
                    self.sim.move_by_hand(IDS[joint], MID[joint] + SWEEP[joint][side])
            self._held()
        for joint in JOINT_NAMES:
            self.sim.move_by_hand(IDS[joint], MID[joint])
        self._held()
        return '\n'

    def _held(self):
        """Hold until the command has read the arm a few times (a loaded machine reads late),
        and a little longer."""
        self.sim.wait_for_packets(4, time.monotonic() + 60)
        time.sleep(self.hold_s)

    def readline(self):
        step = next(self.script, '')
        return step() if callable(step) else step


def expected_calibration():
    cal = {}
    for joint in JOINT_NAMES:
        low, high = (0, 4095) if joint == 'wrist_roll' else \
            (2047 + SWEEP[joint][0], 2047 + SWEEP[joint][1])
        cal[joint] = {'id': IDS[joint], 'drive_mode': 0, 'homing_offset': MID[joint] - 2047,
                      'range_min': low, 'range_max': high}
    return cal


def test_calibrate_end_to_end_writes_servos_and_lerobots_json(sim, tmp_path, monkeypatch,
                                                              capsys):
    for name in ('HF_LEROBOT_CALIBRATION', 'HF_LEROBOT_HOME', 'XDG_CACHE_HOME'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setattr(sys, 'stdin', Owner(sim))
    code = cli.main(['calibrate', '--port', sim.port, '--id', 'my_follower',
                     '--bus-timeout-ms', str(TIMEOUT_MS)])
    output = capsys.readouterr()
    assert code == 0, output.err
    path = tmp_path / 'hf' / 'lerobot' / 'calibration' / 'robots' / 'so101_follower' / \
        'my_follower.json'
    assert str(path) in output.out
    assert 'write homing offsets to the 6 servos' in output.out
    data = json.loads(path.read_text())
    assert list(data) == list(JOINT_NAMES)
    assert all(list(entry) == list(FIELDS) for entry in data.values())   # LeRobot's fields only
    assert data == expected_calibration()
    loaded = load_calibration(path)
    assert loaded['gripper'] == MotorCalibration(**expected_calibration()['gripper'])
    for joint in JOINT_NAMES:   # EEPROM holds what the file says; locked; torque off
        servo = sim.servos[IDS[joint]]
        assert (servo.get('homing_offset'), servo.get('min_position_limit'),
                servo.get('max_position_limit')) == \
            (data[joint]['homing_offset'], data[joint]['range_min'], data[joint]['range_max'])
        assert servo.get('lock') == 1 and servo.get('torque_enable') == 0
    # the driver takes the arm up with this file without writing anything
    said = []
    bus = FeetechBus(sim.port, timeout_ms=TIMEOUT_MS)
    backend = HardwareBackend(bus, loaded, say=said.append)
    try:
        backend.connect()
        assert said == [] and backend.torque_enabled
    finally:
        backend.close()


def test_not_confirmed_writes_nothing(sim, tmp_path):
    lines = []
    path = tmp_path / 'cal.json'
    assert run_calibrate(sim.port, 'f', output=str(path), stdin=Owner(sim, answer='n'),
                         out=lines.append, timeout_ms=TIMEOUT_MS) == 1
    assert not path.exists() and 'nothing was written' in lines[-1]
    assert all(s.get('homing_offset') == 0 for s in sim.servos.values())


def test_a_joint_left_still_is_refused_in_one_line(sim, tmp_path, monkeypatch, capsys):
    path = tmp_path / 'cal.json'
    monkeypatch.setattr(sys, 'stdin', Owner(sim, still=['wrist_flex']))
    code = cli.main(['calibrate', '--port', sim.port, '--id', 'f', '--output', str(path),
                     '--bus-timeout-ms', str(TIMEOUT_MS)])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1, err
    assert err.startswith('hilserl calibrate: range too small') and 'wrist_flex 2047..2047' in err
    assert 'elbow_flex' not in err and not path.exists()


def test_a_wrong_port_and_a_bus_without_servos_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'stdin', io.StringIO('\n'))
    code = cli.main(['calibrate', '--port', str(tmp_path / 'no_port'), '--id', 'f'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'cannot open serial port' in err
    with SimulatedBus(ids=[]) as empty:
        code = cli.main(['calibrate', '--port', empty.port, '--id', 'f', '--bus-timeout-ms',
                         '50'])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'no reply from shoulder_pan (id 1)' in err
    code = cli.main(['calibrate', '--port', 'x', '--id', '../f'])
    assert code == 2 and 'a file name is needed' in capsys.readouterr().err


def test_offsets_and_ranges_are_lerobots():
    # present reads encoder - offset: an offset in effect is undone, not written first
    offsets = homing_offsets({j: 1000 for j in JOINT_NAMES}, {j: 500 for j in JOINT_NAMES})
    assert set(offsets.values()) == {1500 - 2047}
    with pytest.raises(ValueError, match='shoulder_pan sits where the encoder wraps'):
        homing_offsets({j: 4095 if j == 'shoulder_pan' else 0 for j in JOINT_NAMES},
                       {j: 0 for j in JOINT_NAMES})
    sweep = RangeSweep()
    sweep.add({j: 2047 for j in JOINT_NAMES})
    sweep.add({j: 2600 for j in JOINT_NAMES})
    assert sweep.ranges()['wrist_roll'] == (0, 4095) and sweep.ranges()['gripper'] == (2047, 2600)
    assert sweep.too_small(600) == [f'{j} 2047..2600' for j in JOINT_NAMES if j != 'wrist_roll']
    assert 'a full turn' in sweep.table()


# A calibration as LeRobot's so101_follower writes it (its fields, its order, indent 4).
LEROBOT_FILE = '''{
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1470, "range_min": 758,
                     "range_max": 3292},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 157, "range_min": 612,
                      "range_max": 3401},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": 1105, "range_min": 895,
                   "range_max": 3102},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": -2005, "range_min": 850,
                   "range_max": 3250},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": 336, "range_min": 0,
                   "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1212, "range_min": 2037,
                "range_max": 3450}
}'''


def test_a_lerobot_file_is_read_as_it_is_and_ours_is_the_same_format(tmp_path):
    source = tmp_path / 'lerobot.json'
    source.write_text(LEROBOT_FILE)
    cal = load_calibration(source)
    assert cal['wrist_flex'] == MotorCalibration(4, 0, -2005, 850, 3250)
    assert cal['gripper'].range_max == 3450 and cal['shoulder_pan'].homing_offset == -1470
    save_calibration(cal, tmp_path / 'ours.json')
    assert json.loads((tmp_path / 'ours.json').read_text()) == json.loads(LEROBOT_FILE)


def test_lerobots_calibration_folder_from_the_environment(tmp_path, monkeypatch):
    for name in ('HF_LEROBOT_CALIBRATION', 'HF_LEROBOT_HOME', 'HF_HOME', 'XDG_CACHE_HOME'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    home = tmp_path / '.cache' / 'huggingface' / 'lerobot' / 'calibration'
    assert default_calibration_path('a') == home / 'robots' / 'so101_follower' / 'a.json'
    assert default_calibration_path('b', leader=True) == \
        home / 'teleoperators' / 'so101_leader' / 'b.json'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert default_calibration_path('a').parts[-7:-4] == ('xdg', 'huggingface', 'lerobot')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    assert default_calibration_path('a') == \
        tmp_path / 'hf' / 'lerobot' / 'calibration' / 'robots' / 'so101_follower' / 'a.json'
    monkeypatch.setenv('HF_LEROBOT_HOME', str(tmp_path / 'lr'))
    assert default_calibration_path('a').parent.parent.parent == tmp_path / 'lr' / 'calibration'
    monkeypatch.setenv('HF_LEROBOT_CALIBRATION', str(tmp_path / 'cal'))
    assert default_calibration_path('a') == tmp_path / 'cal' / 'robots' / 'so101_follower' / \
        'a.json'


def test_the_driver_refuses_another_calibration_or_writes_it_when_allowed():
    cal = default_calibration()   # limits 100..3996 (gripper 1500..2600), offsets 0
    with SimulatedBus() as sim:   # servos as they come: limits 0..4095
        backend = HardwareBackend(FeetechBus(sim.port, timeout_ms=TIMEOUT_MS), cal,
                                  calibration_source='follower.json')
        with pytest.raises(BackendError) as refused:
            backend.connect()
        message = str(refused.value)
        assert '\n' not in message and 'follower.json' in message
        assert 'shoulder_pan range_min servo 0 / file 100, range_max servo 4095 / file 3996' \
            in message
        assert 'hilserl calibrate' in message and 'write_calibration_to_servos' in message
        assert all(s.get('min_position_limit') == 0 and not s.get('torque_enable')
                   for s in sim.servos.values())   # nothing written, no torque
        assert not backend.bus.is_open
        said = []
        backend = HardwareBackend(FeetechBus(sim.port, timeout_ms=TIMEOUT_MS), cal,
                                  write_calibration=True, say=said.append)
        backend.connect()
        backend.close()
        assert len(said) == 1 and 'gripper range_min servo 0 / file 1500' in said[0]
        assert all((s.get('min_position_limit'), s.get('lock')) == (cal[n].range_min, 1)
                   for n, s in zip(JOINT_NAMES, (sim.servos[i] for i in range(1, 7))))
        # a homing offset that differs is refused the same way (positions would be misread)
        other = dict(cal, elbow_flex=MotorCalibration(3, 0, -300, 100, 3996))
        backend = HardwareBackend(FeetechBus(sim.port, timeout_ms=TIMEOUT_MS), other)
        with pytest.raises(BackendError, match='elbow_flex homing_offset servo 0 / file -300'):
            backend.connect()
