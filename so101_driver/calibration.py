"""LeRobot-compatible SO-101 calibration and ticks <-> radians (pure functions).

A LeRobot calibration JSON is reused as-is:
  {"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1024, "range_min": 700,
                    "range_max": 3400}, ...}
Arm joints: rad = radians((raw - mid) * 360 / 4095) with mid = (range_min + range_max) / 2, which
is LeRobot's DEGREES mode, so URDF radians = radians(LeRobot degrees). Gripper: LeRobot's 0..100
range (0 = range_min) read as degrees, i.e. 0..1.745 rad, as LeRobot feeds it to its kinematics.
drive_mode 1 inverts a joint.

Where LeRobot keeps them (lerobot/utils/constants.py): $HF_LEROBOT_CALIBRATION, else
$HF_LEROBOT_HOME/calibration, else $HF_HOME/lerobot/calibration (HF_HOME: huggingface_hub's,
default $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface); then robots/<robot type>/<id>.json
for a follower and teleoperators/<teleop type>/<id>.json for a leader.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Mapping

from hilserl.messages.conventions import JOINT_NAMES
from hilserl.common.files import write_text_atomic

DEGREES_PER_TICK = 360.0 / 4095.0  # LeRobot divides by 4095, not 4096
FIELDS = ('id', 'drive_mode', 'homing_offset', 'range_min', 'range_max')  # LeRobot's, in order
FOLLOWER_TYPE = 'so101_follower'   # LeRobot's robot type (its folder under robots/)
LEADER_TYPE = 'so101_leader'       # LeRobot's teleoperator type (under teleoperators/)


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class MotorCalibration:
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    def __post_init__(self):
        if not 0 <= self.id <= 253:
            raise CalibrationError(f'id={self.id}: must be in [0, 253]')
        if self.drive_mode not in (0, 1):
            raise CalibrationError(f'drive_mode={self.drive_mode}: must be 0 or 1')
        if not 0 <= self.range_min < self.range_max <= 4095:
            raise CalibrationError(f'range [{self.range_min}, {self.range_max}] must satisfy '
                                   '0 <= range_min < range_max <= 4095')
        if abs(self.homing_offset) >= 2048:
            raise CalibrationError(f'homing_offset={self.homing_offset}: must be in (-2048, 2048)')

    @property
    def mid(self) -> float:
        return (self.range_min + self.range_max) / 2.0


def load_calibration(path) -> Dict[str, MotorCalibration]:
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise CalibrationError(f'calibration file {str(path)!r} does not exist')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CalibrationError(f'calibration file {str(path)!r} is not JSON: {exc}') from None
    return parse_calibration(data, source=str(path))


def parse_calibration(data: Mapping, source: str = 'calibration') -> Dict[str, MotorCalibration]:
    missing = [name for name in JOINT_NAMES if name not in data]
    if missing:
        raise CalibrationError(f'{source}: missing joints {missing}')
    out = {}
    for name in JOINT_NAMES:
        entry = data[name]
        try:
            out[name] = MotorCalibration(**{k: int(entry[k]) for k in FIELDS})
        except KeyError as exc:
            raise CalibrationError(f'{source}: {name} lacks {exc}') from None
        except CalibrationError as exc:
            raise CalibrationError(f'{source}: {name}: {exc}') from None
    ids = [c.id for c in out.values()]
    if len(set(ids)) != len(ids):
        raise CalibrationError(f'{source}: duplicate motor ids {ids}')
    return out


def save_calibration(calibration: Mapping[str, MotorCalibration], path) -> None:
    write_text_atomic(path, json.dumps({n: asdict(c) for n, c in calibration.items()}, indent=4))


def lerobot_calibration_root() -> Path:
    """LeRobot's calibration folder, from the same environment variables LeRobot reads."""
    if os.environ.get('HF_LEROBOT_CALIBRATION'):
        return Path(os.environ['HF_LEROBOT_CALIBRATION']).expanduser()
    if os.environ.get('HF_LEROBOT_HOME'):
        home = Path(os.environ['HF_LEROBOT_HOME'])
    else:
        hf_home = os.environ.get('HF_HOME') or os.path.join(
            os.environ.get('XDG_CACHE_HOME') or '~/.cache', 'huggingface')
        home = Path(hf_home) / 'lerobot'
    return (home / 'calibration').expanduser()


def default_calibration_path(arm_id: str, leader: bool = False) -> Path:
    """Where LeRobot reads (and writes) the calibration of the SO-101 follower or leader `arm_id`
    (LeRobot's --robot.id / --teleop.id)."""
    if not arm_id or arm_id in ('.', '..') or '/' in arm_id or os.sep in arm_id:
        raise CalibrationError(f'arm id {arm_id!r}: a file name is needed (e.g. follower)')
    kind = ('teleoperators', LEADER_TYPE) if leader else ('robots', FOLLOWER_TYPE)
    return lerobot_calibration_root().joinpath(*kind, f'{arm_id}.json')


def eeprom_values(cal: MotorCalibration) -> Dict[str, int]:
    """What a calibration puts into a servo's EEPROM: register name -> value."""
    return {'homing_offset': cal.homing_offset, 'min_position_limit': cal.range_min,
            'max_position_limit': cal.range_max}


# register name -> the calibration file's field
EEPROM_FIELDS = {'homing_offset': 'homing_offset', 'min_position_limit': 'range_min',
                 'max_position_limit': 'range_max'}


def ticks_to_rad(joint: str, raw: int, cal: MotorCalibration) -> float:
    sign = -1.0 if cal.drive_mode else 1.0
    if joint == 'gripper':
        clipped = min(max(raw, cal.range_min), cal.range_max)
        percent = (clipped - cal.range_min) / (cal.range_max - cal.range_min) * 100.0
        return sign * math.radians(percent)
    return sign * math.radians((raw - cal.mid) * DEGREES_PER_TICK)


def rad_to_ticks(joint: str, rad: float, cal: MotorCalibration) -> int:
    """Inverse of ticks_to_rad, rounded and clamped to the calibrated range."""
    if not math.isfinite(rad):
        raise CalibrationError(f'{joint}: non-finite goal {rad}')
    value = math.degrees(-rad if cal.drive_mode else rad)
    if joint == 'gripper':
        raw = cal.range_min + value / 100.0 * (cal.range_max - cal.range_min)
    else:
        raw = value / DEGREES_PER_TICK + cal.mid
    return int(min(max(round(raw), cal.range_min), cal.range_max))


def default_calibration() -> Dict[str, MotorCalibration]:
    """Mid-range calibration for simulated buses and tests (not for a real arm)."""
    # Arm joints: +-171 deg around mid 2048 (covers every URDF limit); gripper 0..100 %.
    return {name: MotorCalibration(id=i + 1, drive_mode=0, homing_offset=0,
                                   range_min=100 if name != 'gripper' else 1500,
                                   range_max=3996 if name != 'gripper' else 2600)
            for i, name in enumerate(JOINT_NAMES)}
