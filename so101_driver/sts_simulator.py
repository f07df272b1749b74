"""A simulated Feetech STS3215 bus on a pseudo-terminal, speaking the real wire protocol.

Used by tests and benchmarks to drive the hardware backend through the real SDK and a real
serial file descriptor. Each servo has a control table and a simple motor model (moves toward the
goal at a bounded speed while torque is on; cuts its torque when a status error bit is in its
unload conditions, as the firmware's protection does). Faults can be injected: no reply,
corrupted checksum, truncated or random replies at a rate, a servo that disappears, over-
temperature, low voltage, an overload trip. Every goal position a servo receives is recorded.

What setting a servo up needs, as an STS3215 does it:
- EEPROM (addresses 0..39) takes writes only while the lock register (55) is 0; locked, a write
  is acknowledged and ignored. A simulated servo powers up locked (the stricter assumption: code
  that forgets to unlock fails here too).
- A new ID (5) or baud index (6) takes effect after the write's status packet: the reply still
  carries the old ID and leaves at the old rate.
- Baud rate: a pty carries bytes, not bit timing. The simulator reads the line speed the other
  end configured (pyserial sets it with termios on the pty; read back here with TCGETS2, which
  also gives custom rates such as 250000) when it takes an instruction packet, and a servo
  answers only when that speed is the rate of its baud index. Where the speed cannot be read
  every servo hears every packet.
- Servos can be plugged in and unplugged while the bus runs (`plug`, `unplug`), several with the
  same ID included; all of them answer (back to back here, where real replies would collide).
  A broadcast PING (id 254) is answered by every servo, one status packet each, in id order.
"""
from __future__ import annotations

import collections
import fcntl
import os
import pty
import random
import select
import struct
import termios
import threading
import time
import tty
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence

from so101_driver import sts_protocol as sts

# Linux (asm-generic) _IOR('T', 0x2A, struct termios2); c_ospeed sits at byte 40 of the struct.
_TCGETS2 = 0x802C542A
_OSPEED_OFFSET = 40
_TERMIOS_RATES = {getattr(termios, f'B{rate}'): rate for rate in
                  (1_000_000, 500_000, 115_200, 57_600, 38_400, 19_200)
                  if hasattr(termios, f'B{rate}')}


def line_baud(fd: int) -> Optional[int]:
    """The speed (bit/s) a serial fd (either end of a pty) is set to; None if unknown."""
    try:
        buffer = bytearray(64)
        fcntl.ioctl(fd, _TCGETS2, buffer)
        return struct.unpack_from('I', buffer, _OSPEED_OFFSET)[0]
    except OSError:
        pass
    try:
        return _TERMIOS_RATES.get(termios.tcgetattr(fd)[5])
    except termios.error:
        return None


class SimulatedServo:
    def __init__(self, servo_id: int, position_ticks: int = 2048, baud_index: int = 0,
                 homing_offset: int = 0, limits=(0, 4095)):
        """position_ticks: the present-position reading (the encoder minus the homing offset)."""
        self.table = bytearray(256)
        self._put('model_number', sts.MODEL_NUMBER_STS3215)
        self._put('id', servo_id)
        self._put('baud_rate', baud_index)
        self._put('return_delay', 250)
        self._put('homing_offset', homing_offset)
        self._put('min_position_limit', limits[0])
        self._put('max_position_limit', limits[1])
        self._put('lock', 1)
        self._put('max_temperature', 70)
        self._put('max_input_voltage', 140)
        self._put('min_input_voltage', 45)
        # Assumed protections (the factory value is not measured here): cut torque on
        # overheat, over-current and overload.
        self._put('unload_conditions', sts.ERRBIT_OVERHEAT | sts.ERRBIT_OVERCURRENT |
                  sts.ERRBIT_OVERLOAD)
        self._put('max_torque', 1000)
        self._put('p_coefficient', 32)
        self._put('torque_limit', 1000)
        self._put('present_voltage', 120)
        self._put('present_temperature', 30)
        # physical encoder reading, before the offset
        self.actual_ticks = float(position_ticks + homing_offset)
        self.latched_error = 0   # tripped protections (overload...), cleared by torque on
        self.goals_received: List[int] = []  # every goal position written, register value
        self._put('goal_position', position_ticks)
        self._update_present(0.0, 0.0)
        self.max_speed_ticks_s = 3000.0

    @property
    def id(self) -> int:
        return self.table[sts.REGISTERS['id'].address]

    @property
    def baud_index(self) -> int:
        return self.table[sts.REGISTERS['baud_rate'].address]

    def _put(self, name, value):
        reg = sts.REGISTERS[name]
        self.table[reg.address:reg.address + reg.size] = sts.to_bytes(sts.encode(reg, value),
                                                                      reg.size)

    def get(self, name) -> int:
        reg = sts.REGISTERS[name]
        return sts.decode(reg, sts.from_bytes(self.table[reg.address:reg.address + reg.size]))

    def _offset(self) -> int:
        return self.get('homing_offset')

    def _update_present(self, speed, error):
        self._put('present_position', int(round(self.actual_ticks)) - self._offset())
        self._put('present_speed', int(round(speed)))
        load = max(-1000, min(1000, int(error * 2)))
        self._put('present_load', load)
        self._put('moving', int(abs(speed) > 1))
        self._put('status', self.status_error())

    def advance(self, dt_s: float):
        if self.get('torque_enable') and self.status_error() & self.get('unload_conditions'):
            self._put('torque_enable', 0)  # protection: the servo goes limp
        if self.get('torque_enable'):
            goal = self.get('goal_position')
            lo, hi = self.get('min_position_limit'), self.get('max_position_limit')
            if hi > lo:
                goal = max(lo, min(hi, goal))  # the firmware clamps goals to its limits
            target = goal + self._offset()
            error = target - self.actual_ticks
            step = max(-self.max_speed_ticks_s * dt_s, min(self.max_speed_ticks_s * dt_s, error))
            self.actual_ticks += step
            self._update_present(step / dt_s if dt_s > 0 else 0.0, error)
        else:
            self._update_present(0.0, 0.0)

    def status_error(self) -> int:
        error = 0
        if self.get('present_temperature') > self.get('max_temperature'):
            error |= sts.ERRBIT_OVERHEAT
        voltage = self.get('present_voltage')
        if not self.get('min_input_voltage') <= voltage <= self.get('max_input_voltage'):
            error |= sts.ERRBIT_VOLTAGE
        return error | self.latched_error

    def write(self, address: int, data: bytes):
        # Writes to read-only areas (firmware, model, present values) are ignored like the
        # firmware does; so are EEPROM bytes while the lock is closed.
        locked = self.get('lock') != 0
        for k, byte in enumerate(data):
            at = address + k
            if at in (0, 1, 3, 4) or (at >= 56 and at != 85) or \
                    (locked and at < sts.EEPROM_END):
                continue
            self.table[at] = byte
        offset = sts.REGISTERS['homing_offset']
        if address < offset.address + offset.size and address + len(data) > offset.address:
            # the firmware reports through the new offset at once, not at the next motor tick
            self._put('present_position', int(round(self.actual_ticks)) - self._offset())
        goal = sts.REGISTERS['goal_position']
        if address <= goal.address and address + len(data) >= goal.address + goal.size:
            self.goals_received.append(self.get('goal_position'))
        torque = sts.REGISTERS['torque_enable'].address
        if address <= torque < address + len(data) and self.get('torque_enable'):
            self.latched_error = 0  # re-enabling torque clears a tripped protection


class SimulatedBus:
    """Six (or any) servos behind a pty. `port` is the device path to give the SDK."""

    def __init__(self, ids: Iterable[int] = range(1, 7), positions: Optional[Dict[int, int]] = None,
                 physics_rate_hz: float = 500.0,
                 calibration: Optional[Mapping[str, Any]] = None):
        """positions: present-position readings by id (default 2048). calibration: joint ->
        MotorCalibration-like (id, homing_offset, range_min, range_max): the servos hold it in
        EEPROM, as `hilserl calibrate` leaves them (default: offset 0, limits 0..4095)."""
        eeprom = {c.id: c for c in (calibration or {}).values()}
        self._plugged: List[SimulatedServo] = []
        for i in ids:
            cal = eeprom.get(i)
            self._plugged.append(SimulatedServo(
                i, (positions or {}).get(i, 2048),
                homing_offset=cal.homing_offset if cal else 0,
                limits=(cal.range_min, cal.range_max) if cal else (0, 4095)))
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._silent: set = set()
        self._drop_replies = 0
        self._corrupt_replies = 0
        self._fault_mode: Optional[str] = None
        self._fault_rate = 0.0
        self._fault_ids: Optional[set] = None
        self._rng = random.Random(0)
        self.packets_seen = 0        # instruction packets received (valid or not)
        self.replies_faulted = 0     # status packets dropped, corrupted, cut or replaced
        # 0-based indices of the instruction packets whose replies were faulted (what
        # FeetechBus.BusFault.packet_index counts on the other end).
        self.faulted_packets: List[int] = []
        # the last instruction packets: (index, seconds since start, servo id, instruction,
        # reply bytes, replies faulted), to tell what a bus saw when a count went wrong
        self._packet_log: Deque[tuple] = collections.deque(maxlen=5000)
        self._started_s = time.monotonic()
        self._frame_index = -1
        self._out = bytearray()
        self._physics_dt = 1.0 / physics_rate_hz
        self._thread = threading.Thread(target=self._serve, name='sts-bus', daemon=True)
        self._thread.start()

    @property
    def servos(self) -> Dict[int, SimulatedServo]:
        """The plugged servos by id (of several with one id, the last plugged)."""
        return {servo.id: servo for servo in list(self._plugged)}

    def plug(self, servo_id=1, position_ticks: int = 2048, baud_index: int = 0
             ) -> SimulatedServo:
        """A servo is connected to the bus: a new one (factory state: id 1 at 1 Mbit/s) or,
        given a SimulatedServo, one unplugged before, as it was."""
        servo = servo_id if isinstance(servo_id, SimulatedServo) else \
            SimulatedServo(servo_id, position_ticks, baud_index)
        with self._lock:
            self._plugged.append(servo)
        return servo

    def unplug(self, servo: SimulatedServo) -> None:
        with self._lock:
            self._plugged = [s for s in self._plugged if s is not servo]

    # --- fault injection --------------------------------------------------------------------
    def silence(self, servo_id: int, silent: bool = True):
        """The servo disappears from the bus (no reply to anything)."""
        with self._lock:
            (self._silent.add if silent else self._silent.discard)(servo_id)

    def drop_next_replies(self, count: int):
        with self._lock:
            self._drop_replies = count

    def corrupt_next_replies(self, count: int):
        with self._lock:
            self._corrupt_replies = count

    FAULT_MODES = ('checksum', 'truncate', 'random', 'silent', 'short')

    def inject_faults(self, mode: str, rate: float, ids: Optional[Sequence[int]] = None,
                      seed: int = 0):
        """From now on each status packet (of `ids`, default all) is faulted with probability
        `rate`: checksum = last byte flipped; truncate = cut after 1..n-1 bytes; random = replaced
        by 1..n+2 random bytes; silent = not sent; short = a valid packet without its parameters
        (the SDK indexes past its end)."""
        if mode not in self.FAULT_MODES:
            raise ValueError(f'fault mode {mode!r}: must be one of {self.FAULT_MODES}')
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f'fault rate {rate}: must be in [0, 1]')
        with self._lock:
            self._fault_mode, self._fault_rate = mode, rate
            self._fault_ids = set(ids) if ids is not None else None
            self._rng = random.Random(seed)

    def stop_faults(self):
        with self._lock:
            self._fault_mode, self._fault_rate = None, 0.0

    def set_temperature(self, servo_id: int, celsius: int):
        with self._lock:
            self.servos[servo_id]._put('present_temperature', celsius)

    def set_voltage(self, servo_id: int, volts: float):
        with self._lock:
            self.servos[servo_id]._put('present_voltage', int(round(volts * 10)))

    def trip(self, servo_id: int, error_bits: int = sts.ERRBIT_OVERLOAD):
        """A protection trips (latched until torque is enabled again)."""
        with self._lock:
            self.servos[servo_id].latched_error |= error_bits

    def wait_for_packets(self, count: int, deadline_s: float) -> bool:
        """Wait until `count` more instruction packets have come in (the program under test
        has read the arm that often since), or time.monotonic() passes `deadline_s`; True when
        they came."""
        target = self.packets_seen + count
        while self.packets_seen < target:
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(0.02)
        return True

    def move_by_hand(self, servo_id: int, position_ticks: float) -> None:
        """A person moves a limp servo (a leader arm) to this encoder reading; a servo holding
        torque resists and stays where it is driven."""
        with self._lock:
            servo = self.servos[servo_id]
            if servo.get('torque_enable'):
                raise RuntimeError(f'servo {servo_id} holds torque: it cannot be moved by hand')
            servo.actual_ticks = float(position_ticks)
            # the encoder reads the new position at once, not at the next motor tick: a read
            # that comes before that tick must not see where the joint was
            servo._update_present(0.0, 0.0)

    # --- lifecycle --------------------------------------------------------------------------
    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- protocol ---------------------------------------------------------------------------
    def _serve(self):
        buffer = bytearray()
        last = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], self._physics_dt)
            now = time.monotonic()
            if now - last >= self._physics_dt:
                with self._lock:
                    for servo in self._plugged:
                        servo.advance(now - last)
                last = now
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 4096)
            except OSError:
                return
            while True:
                frame = self._take_packet(buffer)
                if frame is None:
                    break
                self._frame_index = self.packets_seen
                self.packets_seen += 1
                self._handle(frame)

    @staticmethod
    def _take_packet(buffer: bytearray):
        start = buffer.find(b'\xff\xff')
        if start < 0:
            del buffer[:-1]
            return None
        del buffer[:start]
        if len(buffer) < 4:
            return None
        total = buffer[3] + 4
        if len(buffer) < total:
            return None
        frame = bytes(buffer[:total])
        del buffer[:total]
        if sts.checksum(frame[2:-1]) != frame[-1]:
            return b''  # corrupted instruction: a real servo ignores it
        return frame

    def _faulted(self):
        if not self.faulted_packets or self.faulted_packets[-1] != self._frame_index:
            self.faulted_packets.append(self._frame_index)
        self.replies_faulted += 1

    def _reply(self, servo: SimulatedServo, params=b'', reply_id: Optional[int] = None):
        reply_id = servo.id if reply_id is None else reply_id
        if reply_id in self._silent:
            return
        if self._drop_replies > 0:
            self._drop_replies -= 1
            self._faulted()
            return
        data = bytearray(sts.packet(reply_id, servo.status_error(), params))
        if self._corrupt_replies > 0:
            self._corrupt_replies -= 1
            data[-1] ^= 0x5A
            self._faulted()
        elif self._fault_mode and (self._fault_ids is None or servo.id in self._fault_ids) \
                and self._rng.random() < self._fault_rate:
            self._faulted()
            rng, mode = self._rng, self._fault_mode
            if mode == 'silent':
                return
            if mode == 'checksum':
                data[-1] ^= rng.randint(1, 255)
            elif mode == 'truncate':
                data = data[:rng.randint(1, len(data) - 1)]
            elif mode == 'random':
                data = bytearray(rng.getrandbits(8) for _ in range(rng.randint(1, len(data) + 2)))
            elif mode == 'short':
                data = bytearray(sts.packet(reply_id, servo.status_error()))
        self._out += data

    def goals_received(self) -> Dict[int, List[int]]:
        """Every goal position each servo received (register values), in order."""
        with self._lock:
            return {i: list(s.goals_received) for i, s in self.servos.items()}

    def _handle(self, frame: bytes):
        if not frame:
            return
        # All replies to one instruction leave in one write, back to back as on a real bus.
        self._out = bytearray()
        faulted_before = self.replies_faulted
        self._answer(frame)
        if self._out:
            os.write(self._master, bytes(self._out))
        with self._lock:
            self._packet_log.append((self._frame_index,
                                     round(time.monotonic() - self._started_s, 4), frame[2],
                                     frame[4], bytes(self._out).hex(),
                                     self.replies_faulted - faulted_before))

    def packet_log_around(self, index: int, span: int) -> List[tuple]:
        """What the simulator received and answered for packets index - span .. index + span."""
        with self._lock:
            return [entry for entry in self._packet_log if abs(entry[0] - index) <= span]

    def _answer(self, frame: bytes):
        servo_id, instruction, params = frame[2], frame[4], frame[5:-1]
        baud = line_baud(self._slave)
        with self._lock:
            # Only servos set to the line's rate make sense of the bytes.
            hearing = [s for s in self._plugged
                       if baud is None or sts.BAUD_RATES.get(s.baud_index) == baud]

            def addressed(target_id):
                return [s for s in hearing if s.id == target_id]
            if instruction == sts.INST_SYNC_WRITE and servo_id == sts.BROADCAST_ID:
                address, length = params[0], params[1]
                for i in range(2, len(params), length + 1):
                    for target in addressed(params[i]):
                        if target.id not in self._silent:
                            target.write(address, params[i + 1:i + 1 + length])
                return
            if instruction == sts.INST_SYNC_READ and servo_id == sts.BROADCAST_ID:
                address, length = params[0], params[1]
                for target_id in params[2:]:
                    for target in addressed(target_id):
                        self._reply(target, target.table[address:address + length])
                return
            if servo_id == sts.BROADCAST_ID:
                if instruction == sts.INST_PING:
                    for target in sorted(hearing, key=lambda s: s.id):
                        self._reply(target)
                elif instruction == sts.INST_WRITE:  # every servo writes, none replies
                    for target in hearing:
                        if target.id not in self._silent:
                            target.write(params[0], params[1:])
                return
            for servo in addressed(servo_id):
                if instruction == sts.INST_PING:
                    self._reply(servo)
                elif instruction == sts.INST_READ:
                    address, length = params[0], params[1]
                    self._reply(servo, servo.table[address:address + length])
                elif instruction in (sts.INST_WRITE, sts.INST_REG_WRITE):
                    if servo.id not in self._silent:
                        servo.write(params[0], params[1:])
                    # a new id (or baud index) applies after this reply: it has the old id
                    self._reply(servo, reply_id=servo_id)
