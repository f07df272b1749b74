"""Feetech STS3215 control table and value encodings, in one place (protocol 0, little endian).

Sign-magnitude encodings (not two's complement): bit 15 for goal/present position and speed,
bit 11 for the homing offset, bit 10 for the present load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

TICKS_PER_REV = 4096
MODEL_NUMBER_STS3215 = 777

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
BROADCAST_ID = 0xFE
MAX_ID = 253        # 0..253 address one servo; 254 is the broadcast id

# Baud index (register 6) -> bit/s: the indices the docs confirm (5-7 differ between LeRobot and
# the Feetech SDK, so nothing here writes or assumes them).
BAUD_RATES = {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200}
# Where a servo of unknown history may listen: the confirmed rates, then LeRobot's 5-7.
SCAN_BAUD_RATES = (1_000_000, 500_000, 250_000, 128_000, 115_200, 57_600, 38_400, 19_200)
EEPROM_END = 40     # addresses below are EEPROM (writable only with lock = 0), 40.. are RAM

ERRBIT_VOLTAGE = 1
ERRBIT_ANGLE = 2
ERRBIT_OVERHEAT = 4
ERRBIT_OVERCURRENT = 8
ERRBIT_OVERLOAD = 32
# What a servo is assumed to cut its torque on when its unload-conditions register (19) cannot be
# read: the protections the status byte reports besides the angle sensor.
DEFAULT_UNLOAD_ERRBITS = ERRBIT_VOLTAGE | ERRBIT_OVERHEAT | ERRBIT_OVERCURRENT | ERRBIT_OVERLOAD
ERROR_NAMES = {ERRBIT_VOLTAGE: 'input voltage', ERRBIT_ANGLE: 'angle sensor',
               ERRBIT_OVERHEAT: 'overheat', ERRBIT_OVERCURRENT: 'over-current',
               ERRBIT_OVERLOAD: 'overload'}


@dataclass(frozen=True)
class Register:
    address: int
    size: int
    sign_bit: Optional[int] = None
    eeprom: bool = False


REGISTERS = {
    'model_number': Register(3, 2, eeprom=True),
    'id': Register(5, 1, eeprom=True),
    'baud_rate': Register(6, 1, eeprom=True),
    'return_delay': Register(7, 1, eeprom=True),
    'min_position_limit': Register(9, 2, eeprom=True),
    'max_position_limit': Register(11, 2, eeprom=True),
    'max_temperature': Register(13, 1, eeprom=True),
    'max_input_voltage': Register(14, 1, eeprom=True),
    'min_input_voltage': Register(15, 1, eeprom=True),
    'max_torque': Register(16, 2, eeprom=True),
    'phase': Register(18, 1, eeprom=True),
    'unload_conditions': Register(19, 1, eeprom=True),
    'led_alarm_conditions': Register(20, 1, eeprom=True),
    'p_coefficient': Register(21, 1, eeprom=True),
    'd_coefficient': Register(22, 1, eeprom=True),
    'i_coefficient': Register(23, 1, eeprom=True),
    'protection_current': Register(28, 2, eeprom=True),
    'homing_offset': Register(31, 2, sign_bit=11, eeprom=True),
    'operating_mode': Register(33, 1, eeprom=True),
    'overload_torque': Register(36, 1, eeprom=True),
    'torque_enable': Register(40, 1),
    'acceleration': Register(41, 1),
    'goal_position': Register(42, 2, sign_bit=15),
    'goal_time': Register(44, 2),
    'goal_speed': Register(46, 2, sign_bit=15),
    'torque_limit': Register(48, 2),
    'lock': Register(55, 1),
    'present_position': Register(56, 2, sign_bit=15),
    'present_speed': Register(58, 2, sign_bit=15),
    'present_load': Register(60, 2, sign_bit=10),
    'present_voltage': Register(62, 1),
    'present_temperature': Register(63, 1),
    'status': Register(65, 1),
    'moving': Register(66, 1),
    'present_current': Register(69, 2),
}


def baud_index(baudrate: int) -> int:
    """Register-6 value for a bit rate (ValueError for a rate not in BAUD_RATES)."""
    for index, rate in BAUD_RATES.items():
        if rate == baudrate:
            return index
    raise ValueError(f'baud rate {baudrate}: an STS3215 takes one of '
                     f'{sorted(BAUD_RATES.values(), reverse=True)}')


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """Signed int -> register value with the sign in `sign_bit`."""
    magnitude = abs(int(value))
    if magnitude >= (1 << sign_bit):
        raise ValueError(f'{value} does not fit a sign-magnitude field with sign bit {sign_bit}')
    return magnitude | ((1 << sign_bit) if value < 0 else 0)


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    """Register value -> signed int (sign in `sign_bit`)."""
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def encode(register: Register, value: int) -> int:
    if register.sign_bit is not None:
        return encode_sign_magnitude(value, register.sign_bit)
    if not 0 <= int(value) < (1 << (8 * register.size)):
        raise ValueError(f'{value} does not fit {register.size} unsigned bytes')
    return int(value)


def decode(register: Register, raw: int) -> int:
    if register.sign_bit is not None:
        return decode_sign_magnitude(raw, register.sign_bit)
    return int(raw)


def to_bytes(value: int, size: int) -> bytes:
    return int(value).to_bytes(size, 'little')


def from_bytes(data) -> int:
    return int.from_bytes(bytes(data), 'little')


def checksum(body) -> int:
    """~(ID + LEN + INSTR/ERR + params) & 0xFF."""
    return (~sum(body)) & 0xFF


def packet(servo_id: int, code: int, params=b'') -> bytes:
    """Instruction (code = instruction) or status (code = error byte) packet."""
    body = bytes([servo_id, len(params) + 2, code]) + bytes(params)
    return b'\xff\xff' + body + bytes([checksum(body)])


def error_text(error_byte: int) -> str:
    names = [name for bit, name in ERROR_NAMES.items() if error_byte & bit]
    return ', '.join(names) if names else 'none'
