import json
import math

import pytest

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver.calibration import (CalibrationError, default_calibration, load_calibration,
                                      rad_to_ticks, save_calibration, ticks_to_rad)

# A LeRobot so101_follower calibration file, as written by `lerobot-calibrate`.
LEROBOT_JSON = {
    'shoulder_pan': {'id': 1, 'drive_mode': 0, 'homing_offset': -1470, 'range_min': 758,
                     'range_max': 3292},
    'shoulder_lift': {'id': 2, 'drive_mode': 0, 'homing_offset': 153, 'range_min': 823,
                      'range_max': 3233},
    'elbow_flex': {'id': 3, 'drive_mode': 0, 'homing_offset': -1356, 'range_min': 900,
                   'range_max': 3135},
    'wrist_flex': {'id': 4, 'drive_mode': 0, 'homing_offset': 1205, 'range_min': 866,
                   'range_max': 3113},
    'wrist_roll': {'id': 5, 'drive_mode': 0, 'homing_offset': -1536, 'range_min': 0,
                   'range_max': 4095},
    'gripper': {'id': 6, 'drive_mode': 0, 'homing_offset': 1407, 'range_min': 2031,
                'range_max': 3476},
}


def test_lerobot_file_is_reused_as_is(tmp_path):
    path = tmp_path / 'so101_follower.json'
    path.write_text(json.dumps(LEROBOT_JSON, indent=4))
    cal = load_calibration(path)
    assert [cal[n].id for n in JOINT_NAMES] == [1, 2, 3, 4, 5, 6]
    save_calibration(cal, tmp_path / 'copy.json')
    assert json.loads((tmp_path / 'copy.json').read_text()) == LEROBOT_JSON


def test_degrees_convention_matches_lerobot():
    cal = load_calibration_dict()
    pan = cal['shoulder_pan']
    mid = (758 + 3292) / 2
    raw = 3000
    assert ticks_to_rad('shoulder_pan', raw, pan) == pytest.approx(
        math.radians((raw - mid) * 360 / 4095))
    assert ticks_to_rad('shoulder_pan', int(mid), pan) == pytest.approx(0.0, abs=1e-3)


def load_calibration_dict():
    from so101_driver.calibration import parse_calibration
    return parse_calibration(LEROBOT_JSON)


@pytest.mark.parametrize('joint', JOINT_NAMES)
def test_ticks_rad_round_trip_within_one_tick(joint):
    cal = load_calibration_dict()[joint]
    for raw in range(cal.range_min, cal.range_max + 1, 37):
        back = rad_to_ticks(joint, ticks_to_rad(joint, raw, cal), cal)
        assert abs(back - raw) <= 1


def test_gripper_is_0_to_100_percent_as_degrees():
    cal = load_calibration_dict()['gripper']
    assert ticks_to_rad('gripper', 2031, cal) == pytest.approx(0.0)
    assert ticks_to_rad('gripper', 3476, cal) == pytest.approx(math.radians(100))
    assert ticks_to_rad('gripper', 4000, cal) == pytest.approx(math.radians(100))  # clipped


def test_drive_mode_inverts():
    from so101_driver.calibration import MotorCalibration
    normal = MotorCalibration(1, 0, 0, 1000, 3000)
    inverted = MotorCalibration(1, 1, 0, 1000, 3000)
    assert ticks_to_rad('elbow_flex', 2500, inverted) == -ticks_to_rad('elbow_flex', 2500, normal)
    assert rad_to_ticks('elbow_flex', -0.3, inverted) == rad_to_ticks('elbow_flex', 0.3, normal)


def test_goals_are_clamped_to_the_calibrated_range():
    cal = load_calibration_dict()['elbow_flex']
    assert rad_to_ticks('elbow_flex', 10.0, cal) == cal.range_max
    assert rad_to_ticks('elbow_flex', -10.0, cal) == cal.range_min
    with pytest.raises(CalibrationError, match='non-finite'):
        rad_to_ticks('elbow_flex', float('nan'), cal)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CalibrationError, match='does not exist'):
        load_calibration(tmp_path / 'missing.json')
    (tmp_path / 'bad.json').write_text('{not json')
    with pytest.raises(CalibrationError, match='not JSON'):
        load_calibration(tmp_path / 'bad.json')
    partial = dict(LEROBOT_JSON)
    del partial['gripper']
    (tmp_path / 'partial.json').write_text(json.dumps(partial))
    with pytest.raises(CalibrationError, match=r"missing joints \['gripper'\]"):
        load_calibration(tmp_path / 'partial.json')
    broken = json.loads(json.dumps(LEROBOT_JSON))
    broken['wrist_flex']['range_min'] = 3500
    (tmp_path / 'range.json').write_text(json.dumps(broken))
    with pytest.raises(CalibrationError, match='wrist_flex'):
        load_calibration(tmp_path / 'range.json')


def test_default_calibration_covers_every_urdf_limit():
    from hilserl.robot.kinematics import SO101Kinematics
    kin = SO101Kinematics()
    cal = default_calibration()
    for k, joint in enumerate(JOINT_NAMES[:5]):
        c = cal[joint]
        assert ticks_to_rad(joint, c.range_min, c) <= kin.lower[k]
        assert ticks_to_rad(joint, c.range_max, c) >= kin.upper[k]
