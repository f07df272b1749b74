"""A simulated Feetech STS3215 bus on a pseudo-terminal, speaking the real wire protocol.

Used by tests and benchmarks to drive the hardware backend through the real SDK and a real
serial file descriptor. Each servo has a control table and a simple motor model (moves toward the
goal at a bounded speed while torque is on; cuts its torque when a status error bit is in its
unload conditions, as the firmware's protection does). Faults can be injected: no reply,
corrupted checksum, truncated or random replies at a rate, a servo that disappears, over-
temperature, low voltage, an overload trip. Every goal position a servo receives is recorded.
"""
from __future__ import annotations

import os
import pty
import random
import select
import threading
import time
import tty
from typing import Dict, Iterable, List, Optional, Sequence

from so101_driver import sts_protocol as sts


class SimulatedServo:
    def __init__(self, servo_id: int, position_ticks: int = 2048):
        self.id = servo_id
        self.table = bytearray(256)
        self._put('model_number', sts.MODEL_NUMBER_STS3215)
        self._put('id', servo_id)
        self._put('return_delay', 250)
        self._put('max_position_limit', 4095)
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
        self.actual_ticks = float(position_ticks)  # physical encoder reading, before the offset
        self.latched_error = 0   # tripped protections (overload...), cleared by torque on
        self.goals_received: List[int] = []  # every goal position written, register value
        self._put('goal_position', position_ticks)
        self._update_present(0.0, 0.0)
        self.max_speed_ticks_s = 3000.0

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
        # Writes to present/read-only areas are ignored like the firmware does.
        if address >= 56 and address != 85:
            return
        self.table[address:address + len(data)] = data
        goal = sts.REGISTERS['goal_position']
        if address <= goal.address and address + len(data) >= goal.address + goal.size:
            self.goals_received.append(self.get('goal_position'))
        torque = sts.REGISTERS['torque_enable'].address
        if address <= torque < address + len(data) and self.get('torque_enable'):
            self.latched_error = 0  # re-enabling torque clears a tripped protection


class SimulatedBus:
    """Six (or any) servos behind a pty. `port` is the device path to give the SDK."""

    def __init__(self, ids: Iterable[int] = range(1, 7), positions: Optional[Dict[int, int]] = None,
                 physics_rate_hz: float = 500.0):
        self.servos = {i: SimulatedServo(i, (positions or {}).get(i, 2048)) for i in ids}
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
        self._frame_index = -1
        self._out = bytearray()
        self._physics_dt = 1.0 / physics_rate_hz
        self._thread = threading.Thread(target=self._serve, name='sts-bus', daemon=True)
        self._thread.start()

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

    def move_by_hand(self, servo_id: int, position_ticks: float) -> None:
        """A person moves a limp servo (a leader arm) to this encoder reading; a servo holding
        torque resists and stays where it is driven."""
        with self._lock:
            servo = self.servos[servo_id]
            if servo.get('torque_enable'):
                raise RuntimeError(f'servo {servo_id} holds torque: it cannot be moved by hand')
            servo.actual_ticks = float(position_ticks)

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
                    for servo in self.servos.values():
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

    def _reply(self, servo: SimulatedServo, params=b''):
        if servo.id in self._silent:
            return
        if self._drop_replies > 0:
            self._drop_replies -= 1
            self._faulted()
            return
        data = bytearray(sts.packet(servo.id, servo.status_error(), params))
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
                data = bytearray(sts.packet(servo.id, servo.status_error()))
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
        self._answer(frame)
        if self._out:
            os.write(self._master, bytes(self._out))

    def _answer(self, frame: bytes):
        servo_id, instruction, params = frame[2], frame[4], frame[5:-1]
        with self._lock:
            if instruction == sts.INST_SYNC_WRITE and servo_id == sts.BROADCAST_ID:
                address, length = params[0], params[1]
                for i in range(2, len(params), length + 1):
                    target = self.servos.get(params[i])
                    if target is not None and target.id not in self._silent:
                        target.write(address, params[i + 1:i + 1 + length])
                return
            if instruction == sts.INST_SYNC_READ and servo_id == sts.BROADCAST_ID:
                address, length = params[0], params[1]
                for target_id in params[2:]:
                    target = self.servos.get(target_id)
                    if target is not None:
                        self._reply(target, target.table[address:address + length])
                return
            servo = self.servos.get(servo_id)
            if servo is None:
                return
            if instruction == sts.INST_PING:
                self._reply(servo)
            elif instruction == sts.INST_READ:
                address, length = params[0], params[1]
                self._reply(servo, servo.table[address:address + length])
            elif instruction in (sts.INST_WRITE, sts.INST_REG_WRITE):
                if servo.id not in self._silent:
                    servo.write(params[0], params[1:])
                self._reply(servo)
