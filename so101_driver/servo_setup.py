"""Setting up the STS3215 servos of an SO-101 on its bus (no ROS): find the one servo that is
connected, give it its id and baud rate, read it back; torque off, homing offsets and position
limits into EEPROM (unlocked only meanwhile, read back). Everything here raises ValueError or
OSError with a one-line message a person can act on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from so101_driver import sts_protocol as sts
from so101_driver.feetech_bus import BusError, FeetechBus


TICKS = sts.TICKS_PER_REV
HALF_TURN = 2047   # LeRobot's homing: the pose at calibration reads 2047 (4095 // 2)


@dataclass(frozen=True)
class FoundServo:
    id: int
    baudrate: int


def open_bus(port: str, baudrate: int = 1_000_000, timeout_ms: Optional[float] = None,
             retries: int = 2) -> FeetechBus:
    """An open bus, or OSError in one line (no such port, not a serial device, busy)."""
    bus = FeetechBus(port, baudrate, retries=retries, timeout_ms=timeout_ms)
    try:
        bus.open()
    except BusError as exc:
        raise OSError(str(exc)) from None
    return bus


def scan(bus: FeetechBus, baudrates: Sequence[int] = sts.SCAN_BAUD_RATES
         ) -> Tuple[List[FoundServo], List[int]]:
    """A broadcast ping at every rate -> (every servo that answered, the rates where replies came
    back garbled). Every rate is tried: two servos at different rates are two servos."""
    found: List[FoundServo] = []
    garbled_at: List[int] = []
    for baud in baudrates:
        bus.set_baudrate(baud)
        ids, garbled = bus.broadcast_ping()
        found += [FoundServo(i, baud) for i in ids]
        if garbled:
            garbled_at.append(baud)
    return found, garbled_at


def _rates(baudrates: Sequence[int]) -> str:
    return ', '.join(str(b) for b in baudrates)


def single_servo(bus: FeetechBus, joint: str,
                 baudrates: Sequence[int] = sts.SCAN_BAUD_RATES) -> FoundServo:
    """The one servo on the bus, or ValueError naming what answered."""
    found, garbled_at = scan(bus, baudrates)
    if len(found) > 1:
        who = ', '.join(f'id {s.id} at {s.baudrate} baud' for s in found)
        raise ValueError(f'{len(found)} servos answer on {bus.port_name} ({who}): connect only '
                         f'the {joint} servo')
    if garbled_at:
        raise ValueError(f'garbled replies on {bus.port_name} at {_rates(garbled_at)} baud '
                         f'(servos answering at once?): connect only the {joint} servo')
    if not found:
        raise ValueError(f'no servo answers on {bus.port_name} at {_rates(baudrates)} baud: '
                         f'connect the {joint} servo and power the board')
    servo = found[0]
    bus.set_baudrate(servo.baudrate)
    try:
        model = bus.read(servo.id, 'model_number')
    except BusError as exc:
        raise OSError(f'the servo at id {servo.id} ({servo.baudrate} baud) answered a ping '
                      f'but not a read: {exc}') from None
    if model != sts.MODEL_NUMBER_STS3215:
        raise ValueError(f'the servo at id {servo.id} ({servo.baudrate} baud) is model {model}, '
                         f'not an STS3215 ({sts.MODEL_NUMBER_STS3215})')
    return servo


def _write_new_address(bus: FeetechBus, servo_id: int, name: str, value: int) -> None:
    """Write the id or the baud index. Whether the acknowledgement comes from the old id at the
    old rate or already from the new ones is the firmware's business: a missing reply is not
    an error here, the read-back that follows decides."""
    try:
        bus.write(servo_id, name, value)
    except BusError:
        pass


def assign(bus: FeetechBus, found: FoundServo, target_id: int, target_baud: int) -> bool:
    """Give the servo `found` its id and baud rate (EEPROM unlocked only meanwhile, torque off)
    and read them back at the new id and rate; True when anything was written. The bus is left
    at target_baud."""
    index = sts.baud_index(target_baud)
    bus.set_baudrate(found.baudrate)
    try:
        new_id = found.id != target_id
        new_baud = bus.read(found.id, 'baud_rate') != index
        if new_id or new_baud:
            bus.write(found.id, 'torque_enable', 0)
            bus.write(found.id, 'lock', 0)
            if new_id:
                _write_new_address(bus, found.id, 'id', target_id)
            if new_baud:
                _write_new_address(bus, target_id, 'baud_rate', index)
                bus.set_baudrate(target_baud)
            bus.write(target_id, 'lock', 1)
        bus.set_baudrate(target_baud)
    except BusError as exc:
        raise OSError(f'setting id {target_id} at {target_baud} baud failed: {exc}') from None
    check = read_back(bus, [target_id]).get(target_id)
    if check is None or check != (sts.MODEL_NUMBER_STS3215, target_id, index):
        raise OSError(f'the servo did not take id {target_id} at {target_baud} baud (read back '
                      f'at that id and rate: {check or "no reply"})')
    return new_id or new_baud


def read_back(bus: FeetechBus, ids: Sequence[int]
              ) -> Dict[int, Optional[Tuple[int, int, int]]]:
    """id -> (model, id register, baud index) read at the bus's rate; None where no reply."""
    result: Dict[int, Optional[Tuple[int, int, int]]] = {}
    for servo_id in ids:
        try:
            result[servo_id] = (bus.ping(servo_id), bus.read(servo_id, 'id'),
                                bus.read(servo_id, 'baud_rate'))
        except BusError:
            result[servo_id] = None
    return result


def torque_off(bus: FeetechBus, ids: Sequence[int]) -> None:
    """Every servo limp, read back (a sync write is not acknowledged); one still holding gets a
    write of its own."""
    bus.sync_write('torque_enable', {i: 0 for i in ids})
    state = bus.sync_read('torque_enable', ids, ['torque_enable'])
    for servo_id in ids:
        if state[servo_id]['torque_enable']:
            bus.write(servo_id, 'torque_enable', 0)


def present_positions(bus: FeetechBus, ids: Sequence[int]) -> Dict[int, int]:
    raw = bus.sync_read('present_position', ids, ['present_position'])
    return {i: raw[i]['present_position'] for i in ids}


def half_turn_offset(present: int, offset_in_effect: int) -> int:
    """The homing offset that makes the encoder's position now read HALF_TURN (present reads
    encoder - offset, modulo a turn). Computed from the offset in effect instead of clearing it
    first as LeRobot does, so that nothing is written before the owner agrees."""
    return (present + offset_in_effect) % TICKS - HALF_TURN


def write_eeprom(bus: FeetechBus, servo_id: int, values: Mapping[str, int]) -> None:
    """Write EEPROM registers (lock opened only meanwhile) and read them back (OSError if a
    value did not stay)."""
    try:
        bus.write(servo_id, 'lock', 0)
        try:
            for name, value in values.items():
                bus.write(servo_id, name, value)
        finally:
            bus.write(servo_id, 'lock', 1)
        kept = {name: bus.read(servo_id, name) for name in values}
    except BusError as exc:
        raise OSError(f'writing {dict(values)} to servo {servo_id} failed: {exc}') from None
    if kept != dict(values):
        raise OSError(f'servo {servo_id} holds {kept} after writing {dict(values)}')
