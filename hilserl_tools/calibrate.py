"""`hilserl calibrate`: LeRobot's SO-101 calibration, written where and how LeRobot writes it.

Torque off; the owner puts every joint mid-range and presses Enter; the homing offsets that make
that pose read 2047 go into the servos' EEPROM only after a yes; the owner then moves every joint
through its range while a table shows min / now / max, and Enter ends it. wrist_roll turns all
the way round and gets 0..4095 (as LeRobot gives it). A joint swept over less than
MIN_RANGE_TICKS is refused (one line). The position limits go into EEPROM, and the JSON
(LeRobot's fields) to LeRobot's file for the arm id unless --output says otherwise."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, TextIO, Tuple

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver.calibration import (MotorCalibration, default_calibration_path,
                                      save_calibration)
from so101_driver.feetech_bus import BusError
from so101_driver.servo_setup import (TICKS, half_turn_offset, open_bus, present_positions,
                                      torque_off, write_eeprom)
from hilserl_tools.terminal import Lines, LiveView, say

FULL_TURN_JOINTS = ('wrist_roll',)   # LeRobot: no range recorded, 0..4095
# About 18 degrees: every SO-101 joint (the gripper too) sweeps several times this; less means
# the joint was not moved.
MIN_RANGE_TICKS = 200


class RangeSweep:
    """Min / now / max raw position of each joint over a sweep (bus-free)."""

    def __init__(self):
        self.low: Dict[str, int] = {}
        self.high: Dict[str, int] = {}
        self.now: Dict[str, int] = {}

    def add(self, positions: Mapping[str, int]) -> None:
        for joint, value in positions.items():
            self.now[joint] = value
            self.low[joint] = min(value, self.low.get(joint, value))
            self.high[joint] = max(value, self.high.get(joint, value))

    def ranges(self) -> Dict[str, Tuple[int, int]]:
        return {j: (0, TICKS - 1) if j in FULL_TURN_JOINTS else (self.low[j], self.high[j])
                for j in JOINT_NAMES}

    def too_small(self, min_ticks: int) -> List[str]:
        """'<joint> <lo>..<hi>' for each joint swept over less than min_ticks."""
        return [f'{j} {lo}..{hi}' for j, (lo, hi) in self.ranges().items()
                if j not in FULL_TURN_JOINTS and hi - lo < min_ticks]

    def table(self) -> str:
        rows = [f'{"":<14} {"min":>6} {"now":>6} {"max":>6}']
        for j in JOINT_NAMES:
            if j in FULL_TURN_JOINTS:
                rows.append(f'{j:<14} {0:>6} {self.now.get(j, 0):>6} {TICKS - 1:>6}  '
                            '(a full turn)')
            else:
                rows.append(f'{j:<14} {self.low.get(j, 0):>6} {self.now.get(j, 0):>6} '
                            f'{self.high.get(j, 0):>6}')
        return '\n'.join(rows)

    def line(self) -> str:
        return ', '.join(f'{j} {self.low[j]}/{self.now[j]}/{self.high[j]}'
                         for j in JOINT_NAMES if j not in FULL_TURN_JOINTS and j in self.now)


def homing_offsets(present: Mapping[str, int], in_effect: Mapping[str, int]) -> Dict[str, int]:
    """joint -> the offset that makes the pose now read 2047; ValueError for a joint sitting on
    the encoder's seam (an offset of 2048 does not fit the register)."""
    offsets = {j: half_turn_offset(present[j], in_effect[j]) for j in JOINT_NAMES}
    seam = [j for j, offset in offsets.items() if abs(offset) > TICKS // 2 - 1]
    if seam:
        raise ValueError(f'{", ".join(seam)} sits where the encoder wraps round: turn it a '
                         'little and calibrate again; nothing was written')
    return offsets


def run_calibrate(port: str, arm_id: str, leader: bool = False, output: str = '',
                  baudrate: int = 1_000_000, timeout_ms: Optional[float] = None,
                  stdin: Optional[TextIO] = None, out: Callable[[str], None] = say,
                  rate_hz: float = 20.0, min_range_ticks: int = MIN_RANGE_TICKS) -> int:
    """0 with the calibration written (servos and JSON); 1 when the owner does not confirm
    (nothing written anywhere)."""
    path = Path(output).expanduser() if output else default_calibration_path(arm_id, leader)
    arm = 'leader' if leader else 'follower'
    bus = open_bus(port, baudrate, timeout_ms)
    lines = Lines(stdin or sys.stdin)
    ids = {j: k + 1 for k, j in enumerate(JOINT_NAMES)}
    try:
        _check_servos(bus, ids, arm)
        torque_off(bus, list(ids.values()))
        out(f'torque is off: move every joint of the {arm} arm to the middle of its range '
            '(the gripper half open), then press Enter')
        if lines.wait() is None:
            raise ValueError('the input ended before Enter; nothing was written')
        in_effect = {j: bus.read(i, 'homing_offset') for j, i in ids.items()}
        present = _positions(bus, ids)
        offsets = homing_offsets(present, in_effect)
        out('homing offsets: ' + ', '.join(f'{j} {offsets[j]}' for j in JOINT_NAMES))
        out(f'write homing offsets to the {len(ids)} servos (their position limits follow '
            'after the sweep)? [y/N]')
        answer = lines.wait()
        if (answer or '').strip().lower() not in ('y', 'yes'):
            out(f'not confirmed: nothing was written to the servos or to {path}')
            return 1
        for joint, servo_id in ids.items():
            write_eeprom(bus, servo_id, {'homing_offset': offsets[joint]})
        sweep = _sweep(bus, ids, lines, out, rate_hz)
        small = sweep.too_small(min_range_ticks)
        if small:
            raise ValueError(f'range too small (under {min_range_ticks} ticks): '
                             f'{"; ".join(small)}: move it through its whole range and '
                             f'calibrate again; nothing was written to {path} (the servos '
                             f'keep the new homing offsets)')
        calibration = {j: MotorCalibration(id=ids[j], drive_mode=0, homing_offset=offsets[j],
                                           range_min=lo, range_max=hi)
                       for j, (lo, hi) in sweep.ranges().items()}
        for joint, cal in calibration.items():
            write_eeprom(bus, cal.id, {'min_position_limit': cal.range_min,
                                       'max_position_limit': cal.range_max})
    except BusError as exc:   # a servo stopped answering: one line
        raise OSError(f'{arm} arm on {port}: {exc}') from None
    finally:
        bus.close()   # torque stays off: the arm was limp throughout
    replaced = path.exists()
    save_calibration(calibration, path)
    out(f'calibration of the {arm} arm {arm_id!r} written to {path}'
        + (' (replacing the one there)' if replaced else '')
        + '; homing offsets and position limits are on the servos')
    return 0


def _check_servos(bus, ids: Mapping[str, int], arm: str) -> None:
    missing = []
    for joint, servo_id in ids.items():
        try:
            bus.ping(servo_id)
        except BusError:
            missing.append(f'{joint} (id {servo_id})')
    if missing:
        raise ValueError(f'no reply from {", ".join(missing)} of the {arm} arm on '
                         f'{bus.port_name} at {bus.baudrate} baud: check the cable and power, '
                         f'or set the servos up first (hilserl setup-motors --port '
                         f'{bus.port_name})')


def _positions(bus, ids: Mapping[str, int]) -> Dict[str, int]:
    raw = present_positions(bus, list(ids.values()))
    return {j: raw[i] for j, i in ids.items()}


def _sweep(bus, ids: Mapping[str, int], lines: Lines, out: Callable[[str], None],
           rate_hz: float) -> RangeSweep:
    out('move every joint except wrist_roll through its whole range, one at a time; press '
        'Enter when done')
    sweep = RangeSweep()
    view = LiveView(out)
    while True:
        sweep.add(_positions(bus, ids))
        view.show(sweep.table, lambda: 'min/now/max: ' + sweep.line())
        if lines.pressed():
            break
        time.sleep(1.0 / rate_hz)
    out(sweep.table())
    return sweep
