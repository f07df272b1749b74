"""`ArmBackend` for a real SO-101 on a Feetech bus (or the simulated pty bus in tests).

Bus faults become BackendError naming the joints (the caller holds the last goal). A servo that
cuts its own torque (a status error bit in its unload conditions in any reply, or its torque
enable reading 0 in the health read while torque is on) is latched in `torque_lost`:
`torque_enabled` is then False until `set_torque(True)` re-arms every servo.

Calibration in EEPROM: the servos apply their homing offset before reporting a position, so a
servo holding another offset than the calibration file reports positions the file misreads. At
connect such a difference is said in one line and either refused (the default) or, where the
owner allowed it (`write_calibration`), written; nothing is written silently.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver.backend import ArmBackend, BackendError, JointReading
from so101_driver.calibration import (DEGREES_PER_TICK, EEPROM_FIELDS, MotorCalibration,
                                      eeprom_values, rad_to_ticks, ticks_to_rad)
from so101_driver.feetech_bus import (GRIPPER_SETTINGS, BusError, FeetechBus, ServoSettings)
from so101_driver.servo_setup import torque_off, write_eeprom
from so101_driver.sts_protocol import DEFAULT_UNLOAD_ERRBITS, MODEL_NUMBER_STS3215, error_text


def describe_differences(differences: Mapping[str, Mapping[str, Tuple[int, int]]]) -> str:
    """'shoulder_pan homing_offset servo 0 / file -1024, ...' (one line)."""
    return '; '.join(
        f'{joint} ' + ', '.join(f'{EEPROM_FIELDS[key]} servo {held} / file {new}'
                                for key, (held, new) in stale.items())
        for joint, stale in differences.items())


STATE_REGISTERS = ('present_position', 'present_speed', 'present_load')
# One contiguous read (40..65): torque enable shows a servo that dropped its torque.
HEALTH_REGISTERS = ('torque_enable', 'present_voltage', 'present_temperature', 'status')


@dataclass(frozen=True)
class ServoHealth:
    voltage_v: float
    temperature_c: int
    status: int                 # status register (65): error bits, see sts_protocol.ERROR_NAMES
    torque_on: bool = True

    @property
    def status_text(self) -> str:
        return error_text(self.status)


class HardwareBackend(ArmBackend):
    def __init__(self, bus: FeetechBus, calibration: Mapping[str, MotorCalibration],
                 arm_settings: ServoSettings = ServoSettings(),
                 gripper_settings: ServoSettings = GRIPPER_SETTINGS,
                 torque_off_on_close: bool = False, write_calibration: bool = False,
                 calibration_source: str = 'the calibration file',
                 say: Optional[Callable[[str], None]] = None):
        """write_calibration: where a servo's EEPROM differs from `calibration`, write the
        file's values (said in one line through `say`); False refuses to bring the arm up."""
        self.bus = bus
        self.write_calibration = write_calibration
        self.calibration_source = calibration_source
        self.say = say or logging.getLogger(__name__).warning
        self.calibration = dict(calibration)
        self.ids = [self.calibration[n].id for n in JOINT_NAMES]
        self.arm_settings = arm_settings
        self.gripper_settings = gripper_settings
        self.torque_off_on_close = torque_off_on_close
        self._torque = False
        self.joint_of_id = {self.calibration[n].id: n for n in JOINT_NAMES}
        # Error bits each servo cuts its torque on (register 19, read at connect).
        self.unload_bits = {i: DEFAULT_UNLOAD_ERRBITS for i in self.ids}
        self.torque_lost: Dict[str, str] = {}  # joint -> why, latched until set_torque(True)

    def connect(self) -> None:
        """Open, check every servo, configure, seed goals from measured positions, torque on."""
        try:
            if not self.bus.is_open:
                self.bus.open()
            for name, servo_id in zip(JOINT_NAMES, self.ids):
                try:
                    model = self.bus.ping(servo_id)
                except BusError as exc:  # name the joint: which servo to check
                    raise BusError(f'{name} (id {servo_id}) does not answer: {exc}') from exc
                if model != MODEL_NUMBER_STS3215:
                    raise BackendError(f'{name} (id {servo_id}) is model {model}, expected '
                                       f'STS3215 ({MODEL_NUMBER_STS3215})')
            differences = self.calibration_differences()
            if differences and not self.write_calibration:
                self.bus.close()
                raise BackendError(
                    f'the servos hold another calibration than {self.calibration_source} '
                    f'({describe_differences(differences)}): positions would be misread; run '
                    f'`hilserl calibrate` to calibrate again, or set the driver parameter '
                    f'write_calibration_to_servos: true to write the file\'s values')
            if differences:
                self.say(f'writing {self.calibration_source} into the servos\' EEPROM: '
                         f'{describe_differences(differences)}')
            for name, servo_id in zip(JOINT_NAMES, self.ids):
                settings = self.gripper_settings if name == 'gripper' else self.arm_settings
                self.bus.configure(servo_id, settings)
                if name in differences:
                    write_eeprom(self.bus, servo_id, {key: new for key, (_, new)
                                                      in differences[name].items()})
                self.unload_bits[servo_id] = self.bus.read(servo_id, 'unload_conditions')
            # Never command a position before knowing where the arm is (arms snap otherwise).
            present = self.bus.sync_read('present_position', self.ids, ['present_position'])
            self.bus.sync_write('goal_position',
                                {i: present[i]['present_position'] for i in self.ids})
        except BusError as exc:
            raise BackendError(f'cannot bring up the arm on {self.bus.port_name}: '
                               f'{self._bus_error(exc)}') from exc
        except OSError as exc:  # an EEPROM value that did not stay
            raise BackendError(f'{self.bus.port_name}: {exc}') from exc
        self.set_torque(True)

    def calibration_differences(self) -> Dict[str, Dict[str, Tuple[int, int]]]:
        """joint -> {register: (servo's value, file's value)} where they differ (reads only)."""
        differences = {}
        for name, servo_id in zip(JOINT_NAMES, self.ids):
            wanted = eeprom_values(self.calibration[name])
            held = {key: self.bus.read(servo_id, key) for key in wanted}
            stale = {key: (held[key], value) for key, value in wanted.items()
                     if held[key] != value}
            if stale:
                differences[name] = stale
        return differences

    def _names(self, ids: Sequence[int]) -> str:
        return ', '.join(f'{self.joint_of_id.get(i, "?")} (id {i})' for i in ids)

    def _bus_error(self, exc: BusError) -> BackendError:
        return BackendError(f'{self._names(exc.failed_ids)}: {exc}' if exc.failed_ids
                            else str(exc))

    def _protection_bits(self, servo_id: int) -> int:
        """Error bits of the servo's last reply that it cuts its torque on."""
        return self.bus.stats.last_status_by_id.get(servo_id, 0) & \
            self.unload_bits.get(servo_id, DEFAULT_UNLOAD_ERRBITS)

    def _check_replies(self):
        """Latch servos whose last reply carries an error bit they cut torque on."""
        if not self._torque:
            return
        for servo_id in self.ids:
            bits = self._protection_bits(servo_id)
            name = self.joint_of_id[servo_id]
            if bits and name not in self.torque_lost:
                self.torque_lost[name] = f'reports {error_text(bits)}'

    def read(self) -> JointReading:
        try:
            raw = self.bus.sync_read('present_position', self.ids, STATE_REGISTERS)
        except BusError as exc:
            raise self._bus_error(exc) from exc
        self._check_replies()
        position = np.empty(6)
        velocity = np.empty(6)
        effort = np.empty(6)
        for k, (name, servo_id) in enumerate(zip(JOINT_NAMES, self.ids)):
            cal = self.calibration[name]
            values = raw[servo_id]
            position[k] = ticks_to_rad(name, values['present_position'], cal)
            sign = -1.0 if cal.drive_mode else 1.0
            velocity[k] = sign * math.radians(values['present_speed'] * DEGREES_PER_TICK)
            effort[k] = sign * values['present_load'] / 1000.0  # fraction of max torque
        return JointReading(position, velocity, effort, time.monotonic())

    def read_health(self) -> Dict[str, ServoHealth]:
        """Voltage, temperature, status bits and torque state of every servo (1-2 Hz)."""
        try:
            raw = self.bus.sync_read('torque_enable', self.ids, HEALTH_REGISTERS)
        except BusError as exc:
            raise self._bus_error(exc) from exc
        self._check_replies()
        health = {}
        for name, i in zip(JOINT_NAMES, self.ids):
            health[name] = ServoHealth(raw[i]['present_voltage'] / 10.0,
                                       raw[i]['present_temperature'], raw[i]['status'],
                                       bool(raw[i]['torque_enable']))
            if self._torque and not health[name].torque_on and name not in self.torque_lost:
                self.torque_lost[name] = 'torque turned off by the servo' + (
                    f' ({health[name].status_text})' if raw[i]['status'] else '')
        return health

    def write_goal(self, position_rad) -> None:
        goal = np.asarray(position_rad, dtype=np.float64)
        if goal.shape != (6,) or not np.all(np.isfinite(goal)):
            raise ValueError(f'joint goal must be 6 finite values, got {goal}')
        ticks = {self.calibration[n].id: rad_to_ticks(n, goal[k], self.calibration[n])
                 for k, n in enumerate(JOINT_NAMES)}
        try:
            self.bus.sync_write('goal_position', ticks)
        except BusError as exc:
            raise self._bus_error(exc) from exc

    def set_torque(self, enabled: bool) -> None:
        try:
            refused = {}
            if enabled:
                present = self.bus.sync_read('present_position', self.ids, ['present_position'])
                self.bus.sync_write('goal_position',
                                    {i: present[i]['present_position'] for i in self.ids})
                self.bus.sync_write('torque_enable', {i: 1 for i in self.ids})
                refused = self._servos_without_torque()
            else:
                # read back: latched faults have kept servos on at shutdown
                torque_off(self.bus, self.ids)
        except BusError as exc:
            raise BackendError(f'torque {"on" if enabled else "off"} failed: '
                               f'{self._bus_error(exc)}') from exc
        self._torque = bool(enabled)
        # re-armed (or deliberately off): a new decision; a servo that did not take torque
        # stays lost, and the caller is told which and why
        self.torque_lost = {name: f'did not take torque ({why})' for name, why in refused.items()}
        if refused:
            raise BackendError('torque on failed: ' + '; '.join(
                f'{name} (id {self.calibration[name].id}) {why}' for name, why in refused.items())
                + ': it goes limp again to protect itself; let it cool or free it, then '
                'enable torque again')

    def _servos_without_torque(self) -> Dict[str, str]:
        """Read torque back (a sync write is not acknowledged): joint -> why, for each servo
        whose torque is off or whose reply carries an error bit it cuts torque on (an overheated
        servo accepts the write, then lets go at once)."""
        state = self.bus.sync_read('torque_enable', self.ids, ['torque_enable'])
        refused = {}
        for servo_id in self.ids:
            bits = self._protection_bits(servo_id)
            if bits or not state[servo_id]['torque_enable']:
                refused[self.joint_of_id[servo_id]] = \
                    f'reports {error_text(bits)}' if bits else 'reads torque off'
        return refused

    @property
    def torque_enabled(self) -> bool:
        """True while every servo holds torque (False after any servo dropped its own)."""
        return self._torque and not self.torque_lost

    def close(self) -> None:
        if self.torque_off_on_close and self.bus.is_open:
            try:
                self.set_torque(False)
            except BackendError:
                pass
        self.bus.close()


BRING_UP_ATTEMPTS = 5
BRING_UP_FIRST_BACKOFF_S = 0.5


def bring_up(backend: 'HardwareBackend', attempts: int = BRING_UP_ATTEMPTS,
             first_backoff_s: float = BRING_UP_FIRST_BACKOFF_S,
             say: Callable[[str], None] = lambda line: None,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """`backend.connect()`, retried with a doubling backoff while the bus fails (a noisy cable,
    a servo slow to answer after power-up); a refusal that a retry cannot change (another
    model, another calibration in the servos) is not retried. On giving up the arm is left with
    torque off (best effort) and the bus closed; BackendError says in one line what failed."""
    delay_s = first_backoff_s
    for attempt in range(1, attempts + 1):
        try:
            backend.connect()
            return
        except BackendError as exc:
            transient = isinstance(exc.__cause__, BusError)
            if not transient or attempt == attempts:
                _leave_limp(backend)
                tries = f' (after {attempt} attempts)' if attempt > 1 else ''
                raise BackendError(f'{exc}{tries}') from None
            say(f'bring-up attempt {attempt} of {attempts} failed: {exc}; retrying in '
                f'{delay_s:g} s')
            try:
                sleep(delay_s)
            except BaseException:  # a stop while waiting (Ctrl-C, the parent gone): go limp
                _leave_limp(backend)
                raise
            delay_s *= 2
        except BaseException:  # a stop during an attempt: torque may be on already
            _leave_limp(backend)
            raise


def _leave_limp(backend: 'HardwareBackend') -> None:
    try:
        if not backend.bus.is_open:
            backend.bus.open()
        backend.bus.sync_write('torque_enable', {i: 0 for i in backend.ids})
    except (BusError, OSError):
        pass  # the bus itself is what failed: nothing more can be done from here
    finally:
        try:
            backend.bus.close()
        except (BusError, OSError):
            pass
