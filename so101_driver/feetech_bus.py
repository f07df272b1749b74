"""Feetech STS3215 bus access through `feetech-servo-sdk` (scservo_sdk).

All bus traffic goes through one lock (the SDK's port is not thread-safe). Instruction packets
are built here (`sts_protocol.packet`); the SDK's port and status-packet parser read the
replies, and every reply is checked here for the servo id and parameter count the instruction
asked for (the SDK accepts a valid packet of the wrong length and then indexes past its end).

Every failed attempt is a counted `BusFault` (kind, servo, detail) whatever failed: a missing or
corrupted reply, a reply of the wrong shape, an exception raised inside the SDK or pyserial (the
port is reopened after a port error). Transient faults are retried with bounded backoff;
persistent ones raise `BusError` naming the servos, so the caller holds and reports instead of
crashing. The status error byte of every valid reply is recorded per servo.

Late replies: a reply that arrives after its attempt gave up would answer a later request with
old data. The input is flushed before each attempt, and reads ask for 0-3 bytes more than they
need (read and dropped), chosen so that the reply length differs from those of the last three
failed attempts, whatever they read: a late reply of any of them has the wrong length and is
skipped.
"""
from __future__ import annotations

import collections
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from so101_driver import sts_protocol as sts

# Kinds of BusFault.
TIMEOUT = 'timeout'        # no status packet before the reply timeout
INCOMPLETE = 'incomplete'  # bytes arrived, but no complete status packet before the timeout
CORRUPT = 'corrupt'        # complete status packet with a bad checksum
BAD_REPLY = 'bad_reply'    # valid packet, but not the shape the instruction asked for
TX = 'tx'                  # the instruction packet could not be sent
PORT = 'port'              # the serial port failed (unplugged, closed): reopened next attempt
SDK = 'sdk'                # the SDK raised on the bytes it got (e.g. IndexError)


class BusError(RuntimeError):
    def __init__(self, message: str, failed_ids: Sequence[int] = ()):
        super().__init__(message)
        self.failed_ids = tuple(failed_ids)


@dataclass(frozen=True)
class BusFault:
    """One failed attempt."""
    kind: str
    servo_id: Optional[int]   # the servo whose reply failed; None for the bus itself
    detail: str
    packet_index: int         # 0-based index of the instruction packet whose reply failed
    time_s: float             # time.monotonic()

    def __str__(self) -> str:
        who = f'servo {self.servo_id}' if self.servo_id is not None else 'bus'
        return f'{who}: {self.kind}: {self.detail}'


@dataclass
class BusStats:
    transactions: int = 0      # attempts (each retry is one more)
    retries: int = 0
    failures: int = 0          # operations that failed after all retries (raised BusError)
    faults: int = 0            # failed attempts, every one counted
    faults_by_kind: Dict[str, int] = field(default_factory=dict)
    errors_by_id: Dict[int, int] = field(default_factory=dict)        # faults per servo
    status_errors_by_id: Dict[int, int] = field(default_factory=dict)  # replies with error bits
    last_status_by_id: Dict[int, int] = field(default_factory=dict)    # last error byte per servo
    port_reopens: int = 0
    last_error: str = ''
    last_fault: Optional[BusFault] = None
    recent_faults: Deque[BusFault] = field(default_factory=lambda: collections.deque(maxlen=100))
    # Status packets that answered no request of this attempt (a late reply of an attempt that
    # gave up, or another servo's), skipped: (packet index, servo id, parameter bytes)
    late_replies_skipped: int = 0
    recent_late_replies: Deque[Tuple[int, int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=100))


@dataclass(frozen=True)
class ServoSettings:
    """Written once at start-up with torque off (RAM + EEPROM with the lock opened)."""
    return_delay: int = 0
    acceleration: int = 254
    p_coefficient: int = 16
    d_coefficient: int = 32
    i_coefficient: int = 0
    max_torque: Optional[int] = None          # 0.1 % units; None leaves it
    protection_current: Optional[int] = None  # 6.5 mA units
    overload_torque: Optional[int] = None     # %


# LeRobot's protections after gripper burn-outs: 50 % torque, ~1.6 A, 25 % overload.
GRIPPER_SETTINGS = ServoSettings(max_torque=500, protection_current=250, overload_torque=25)


class _Fault(Exception):
    def __init__(self, kind: str, servo_id: Optional[int], detail: str):
        super().__init__(detail)
        self.kind, self.servo_id, self.detail = kind, servo_id, detail


_PORT_CLASS = None


def _port_class(scs):
    """The SDK's PortHandler with a reply-timeout floor, a count of sent packets, and reads that
    wait in select() (the SDK polls a zero-timeout read in a loop: a whole core, and the GIL,
    while waiting for a reply)."""
    global _PORT_CLASS
    if _PORT_CLASS is None:
        class Port(scs.PortHandler):
            min_timeout_ms = 0.0
            poll_s = 0.001
            packets_sent = 0

            def setPacketTimeout(self, packet_length):  # noqa: N802 - SDK name
                super().setPacketTimeout(packet_length)
                self.packet_timeout = max(self.packet_timeout, self.min_timeout_ms)

            def readPort(self, length):  # noqa: N802 - SDK name
                select.select([self.ser.fileno()], [], [], self.poll_s)
                return self.ser.read(length)

            def writePort(self, packet):  # noqa: N802 - SDK name
                self.packets_sent += 1
                return self.ser.write(bytes(packet))
        _PORT_CLASS = Port
    return _PORT_CLASS


class FeetechBus:
    def __init__(self, port: str, baudrate: int = 1_000_000, retries: int = 2,
                 backoff_s: float = 0.002, timeout_ms: Optional[float] = None,
                 fault_log_size: int = 100, reopen_interval_s: float = 0.5):
        """timeout_ms: floor of the reply timeout; None keeps the SDK's (10 us per expected
        byte + 34 ms). Raise it where the other end may be scheduled late (a simulator on a
        loaded machine)."""
        import scservo_sdk as scs
        self._scs = scs
        self.port_name = port
        self.baudrate = baudrate
        self.retries = retries
        self.backoff_s = backoff_s
        self._timeout_ms = timeout_ms
        self.reopen_interval_s = reopen_interval_s
        self.stats = BusStats(recent_faults=collections.deque(maxlen=fault_log_size),
                              recent_late_replies=collections.deque(maxlen=fault_log_size))
        self._lock = threading.Lock()
        self._port = None
        self._packet = None
        self._port_broken = False
        self._last_reopen_s = -float('inf')
        self._talking_to: Optional[int] = None
        # reply lengths that failed attempts were waiting for: a late reply may still bring one
        self._late_lengths: Deque[int] = collections.deque(maxlen=3)
        self._awaiting: Optional[int] = None  # the reply length the current attempt waits for

    # --- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        scs = self._scs
        port = _port_class(scs)(self.port_name)
        port.min_timeout_ms = float(self._timeout_ms or 0.0)
        if port.getCFlagBaud(self.baudrate) <= 0:
            raise BusError(f'baud rate {self.baudrate} refused for {self.port_name!r}')
        port.baudrate = self.baudrate
        try:
            opened = port.openPort()
        except Exception as exc:  # noqa: BLE001 - pyserial raises several types
            raise BusError(f'cannot open serial port {self.port_name!r}: {exc}') from None
        if not opened:
            raise BusError(f'cannot open serial port {self.port_name!r}')
        self._port = port
        self._packet = scs.PacketHandler(0)  # protocol 0: STS/SMS, little endian
        self._port_broken = False

    def close(self) -> None:
        with self._lock:
            if self._port is not None:
                try:
                    self._port.closePort()
                except Exception:  # noqa: BLE001 - closing a failed port must not raise
                    pass
                self._port = None

    def set_baudrate(self, baudrate: int) -> None:
        """Talk at another rate from now on (the port is reopened at it)."""
        with self._lock:
            if self._port is None:
                raise BusError(f'bus {self.port_name!r} is not open')
            try:
                changed = self._port.setBaudRate(baudrate)
            except Exception as exc:  # noqa: BLE001 - pyserial raises several types
                raise BusError(f'cannot set {self.port_name!r} to {baudrate} baud: '
                               f'{exc}') from None
            if not changed:
                raise BusError(f'baud rate {baudrate} refused for {self.port_name!r}')
            self.baudrate = baudrate
            self._late_lengths.clear()  # nothing sent at the old rate can arrive at this one

    @property
    def timeout_ms(self) -> Optional[float]:
        """Floor of the reply timeout (ms); None: the SDK's own."""
        return self._timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: Optional[float]) -> None:
        self._timeout_ms = value
        if self._port is not None:
            self._port.min_timeout_ms = float(value or 0.0)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    @property
    def packets_sent(self) -> int:
        """Instruction packets written since open (BusFault.packet_index counts the same way)."""
        return self._port.packets_sent if self._port is not None else 0

    # --- fault handling ---------------------------------------------------------------------
    def _record(self, fault: _Fault, packets_before: int) -> BusFault:
        # The failing packet is the last one sent (an attempt stops at its first bad reply).
        sent = self.packets_sent
        record = BusFault(fault.kind, fault.servo_id, fault.detail,
                          sent - 1 if sent > packets_before else -1, time.monotonic())
        stats = self.stats
        stats.faults += 1
        stats.faults_by_kind[fault.kind] = stats.faults_by_kind.get(fault.kind, 0) + 1
        if fault.servo_id is not None:
            stats.errors_by_id[fault.servo_id] = stats.errors_by_id.get(fault.servo_id, 0) + 1
        stats.last_fault = record
        stats.last_error = str(record)
        stats.recent_faults.append(record)
        return record

    def _check_status(self, servo_id: int, error_byte: int):
        self.stats.last_status_by_id[servo_id] = error_byte
        if error_byte:
            self.stats.status_errors_by_id[servo_id] = \
                self.stats.status_errors_by_id.get(servo_id, 0) + 1
            self.stats.last_error = f'servo {servo_id} reports {sts.error_text(error_byte)}'

    def _ensure_port(self):
        """After a port error: reopen, at most every reopen_interval_s."""
        if not self._port_broken:
            return
        now = time.monotonic()
        if now - self._last_reopen_s < self.reopen_interval_s:
            raise _Fault(PORT, None, 'serial port failed; waiting to reopen it')
        self._last_reopen_s = now
        try:
            if not self._port.openPort():  # the SDK's setupPort closes and reopens
                raise OSError('openPort returned False')
        except Exception as exc:  # noqa: BLE001 - pyserial raises several types
            raise _Fault(PORT, None, f'cannot reopen {self.port_name!r}: {exc}') from None
        self._port_broken = False
        self.stats.port_reopens += 1

    def _attempt_once(self, attempt):
        """One attempt under the lock; returns attempt()'s value or raises _Fault."""
        self._talking_to = None
        self._awaiting = None
        try:
            self._ensure_port()
            port = self._port
            port.is_using = False          # an exception mid-transfer leaves the SDK's flag set
            port.ser.reset_input_buffer()  # late replies would be read as this one's answer
            return attempt()
        except _Fault:
            raise
        except OSError as exc:  # serial.SerialException is an OSError too
            self._port_broken = True
            try:
                self._port.closePort()
            except Exception:  # noqa: BLE001
                pass
            raise _Fault(PORT, self._talking_to, f'{type(exc).__name__}: {exc}') from None
        except Exception as exc:  # noqa: BLE001 - the SDK indexes into whatever bytes arrived
            raise _Fault(SDK, self._talking_to, f'{type(exc).__name__}: {exc}') from None

    def _retrying(self, what: str, servo_ids: Sequence[int], attempt):
        """Run attempt() up to 1 + retries times with growing backoff; BusError at the end."""
        if self._port is None:
            raise BusError(f'bus {self.port_name!r} is not open')
        failed: List[int] = []
        last = None
        for i in range(self.retries + 1):
            if i:
                self.stats.retries += 1
                time.sleep(self.backoff_s * (2 ** (i - 1)))
            self.stats.transactions += 1
            with self._lock:
                packets_before = self.packets_sent
                try:
                    return self._attempt_once(attempt)
                except _Fault as fault:
                    last = self._record(fault, packets_before)
                    if self._awaiting:  # acks (0 bytes) cannot be told apart by length
                        self._late_lengths.append(self._awaiting)
            if last.servo_id is not None and last.servo_id not in failed:
                failed.append(last.servo_id)
        self.stats.failures += 1
        raise BusError(f'{what} failed after {self.retries + 1} attempts: {last}',
                       failed or list(servo_ids))

    # --- packets (called under the lock) ----------------------------------------------------
    def _send(self, servo_id: int, instruction: int, params=b''):
        data = sts.packet(servo_id, instruction, bytes(params))
        if self._port.writePort(data) != len(data):
            raise _Fault(TX, None if servo_id == sts.BROADCAST_ID else servo_id,
                         'instruction packet not fully written')

    def _status(self, servo_id: int, n_params: int) -> Tuple[bytes, int]:
        """Wait for servo_id's status packet carrying n_params bytes -> (params, error byte).
        Packets of other servos, or of this one with another length (late replies), are
        skipped until the reply timeout."""
        scs, ph = self._scs, self._packet
        self._talking_to = servo_id
        self._awaiting = n_params
        wrong_length = None
        while True:
            rx, comm = ph.rxPacket(self._port)
            complete = len(rx) >= 6 and rx[0] == rx[1] == 0xFF and len(rx) >= rx[3] + 4
            if comm == scs.COMM_RX_CORRUPT and complete and rx[2] != servo_id:
                self._skipped(rx)
                continue  # a damaged packet of another servo (a late reply): not ours
            if comm != scs.COMM_SUCCESS:
                if wrong_length is not None:
                    raise _Fault(BAD_REPLY, servo_id, f'status packet with {wrong_length} '
                                 f'parameter byte(s), expected {n_params}')
                kind = TIMEOUT if comm == scs.COMM_RX_TIMEOUT else \
                    CORRUPT if complete else INCOMPLETE
                raise _Fault(kind, servo_id, ph.getTxRxResult(comm).replace('[TxRxResult] ', ''))
            if rx[2] == servo_id and rx[3] == n_params + 2:
                return bytes(rx[5:5 + n_params]), rx[4]
            if rx[2] == servo_id:
                wrong_length = rx[3] - 2
            self._skipped(rx)

    def _skipped(self, rx) -> None:
        self.stats.late_replies_skipped += 1
        self.stats.recent_late_replies.append((self.packets_sent - 1, rx[2], max(rx[3] - 2, 0)))

    def _transfer(self, servo_id: int, instruction: int, params, n_reply: int
                  ) -> Tuple[bytes, int]:
        self._talking_to = servo_id
        self._send(servo_id, instruction, params)
        self._port.setPacketTimeout(n_reply + 6)
        return self._status(servo_id, n_reply)

    # --- single-servo access ----------------------------------------------------------------
    def _read_length(self, size: int) -> int:
        """Bytes to read for `size` needed: the first of size .. size + 3 that no recent failed
        attempt's late reply can have (three lengths are excluded at most)."""
        return next(n for n in range(size, size + 4) if n not in self._late_lengths)

    def _read_bytes(self, servo_id: int, address: int, size: int) -> Tuple[bytes, int]:
        n = self._read_length(size)
        data, error = self._transfer(servo_id, sts.INST_READ, [address, n], n)
        return data[:size], error

    def ping(self, servo_id: int) -> int:
        """Model number of a servo (777 for an STS3215)."""
        reg = sts.REGISTERS['model_number']

        def attempt():
            _, error = self._transfer(servo_id, sts.INST_PING, b'', 0)
            data, error2 = self._read_bytes(servo_id, reg.address, reg.size)
            self._check_status(servo_id, error | error2)
            return sts.from_bytes(data)
        return self._retrying(f'ping {servo_id}', [servo_id], attempt)

    def broadcast_ping(self) -> Tuple[List[int], int]:
        """PING to every servo (id 254) at the current rate -> (the id of every status packet
        that came back, in order: an id twice means two servos share it; the number of
        garbled packets: replies that collided, or noise). One attempt, no retry: a scan
        counts whoever answers; each packet gets a fresh reply timeout."""
        scs, ph = self._scs, self._packet
        if self._port is None:
            raise BusError(f'bus {self.port_name!r} is not open')
        ids: List[int] = []
        garbled = 0
        with self._lock:
            try:
                port = self._port
                port.is_using = False
                port.ser.reset_input_buffer()
                self._send(sts.BROADCAST_ID, sts.INST_PING)
                for _ in range(2 * sts.MAX_ID):  # bounded: a noisy line never goes quiet
                    port.setPacketTimeout(6)
                    rx, comm = ph.rxPacket(port)
                    if comm == scs.COMM_RX_TIMEOUT:
                        break
                    if comm == scs.COMM_SUCCESS:
                        ids.append(rx[2])
                    else:
                        garbled += 1
                        if not rx:
                            break
            except _Fault as fault:
                raise BusError(f'broadcast ping failed: {fault.detail}') from None
            except OSError as exc:
                raise BusError(f'broadcast ping on {self.port_name!r} failed: {exc}') from None
        return ids, garbled

    def read(self, servo_id: int, name: str) -> int:
        reg = sts.REGISTERS[name]

        def attempt():
            data, error = self._read_bytes(servo_id, reg.address, reg.size)
            self._check_status(servo_id, error)
            return sts.decode(reg, sts.from_bytes(data))
        return self._retrying(f'read {name} from {servo_id}', [servo_id], attempt)

    def write(self, servo_id: int, name: str, value: int) -> None:
        reg = sts.REGISTERS[name]
        data = sts.to_bytes(sts.encode(reg, value), reg.size)

        def attempt():
            _, error = self._transfer(servo_id, sts.INST_WRITE, bytes([reg.address]) + data, 0)
            self._check_status(servo_id, error)
        self._retrying(f'write {name}={value} to {servo_id}', [servo_id], attempt)

    # --- group access -----------------------------------------------------------------------
    def sync_read(self, first: str, ids: Sequence[int], names: Sequence[str]
                  ) -> Dict[int, Dict[str, int]]:
        """One SYNC_READ covering registers `names` (contiguous, starting at `first`). Each
        servo's error byte lands in stats.last_status_by_id once the whole read succeeded."""
        regs = [sts.REGISTERS[n] for n in names]
        start = sts.REGISTERS[first].address
        length = max(r.address + r.size for r in regs) - start
        ids = list(ids)

        def attempt():
            n = self._read_length(length)
            self._send(sts.BROADCAST_ID, sts.INST_SYNC_READ, [start, n] + ids)
            self._port.setPacketTimeout((6 + n) * len(ids))  # one timeout for all replies
            # Servos answer in the listed order; the first silent one ends the read.
            replies = {servo_id: self._status(servo_id, n) for servo_id in ids}
            result = {}
            for servo_id, (raw, error) in replies.items():
                self._check_status(servo_id, error)
                result[servo_id] = {
                    n: sts.decode(r, sts.from_bytes(raw[r.address - start:
                                                        r.address - start + r.size]))
                    for n, r in zip(names, regs)}
            return result
        return self._retrying(f'sync read {list(names)}', ids, attempt)

    def sync_write(self, name: str, values: Mapping[int, int]) -> None:
        """One SYNC_WRITE of a register to several servos (no reply on the wire)."""
        reg = sts.REGISTERS[name]
        params = bytearray([reg.address, reg.size])
        for servo_id, value in values.items():
            params += bytes([servo_id]) + sts.to_bytes(sts.encode(reg, value), reg.size)
        self._retrying(f'sync write {name}', list(values),
                       lambda: self._send(sts.BROADCAST_ID, sts.INST_SYNC_WRITE, params))

    def configure(self, servo_id: int, settings: ServoSettings) -> None:
        """Write start-up settings (torque must be off); EEPROM is unlocked only meanwhile."""
        self.write(servo_id, 'torque_enable', 0)
        self.write(servo_id, 'lock', 0)
        try:
            self.write(servo_id, 'return_delay', settings.return_delay)
            self.write(servo_id, 'operating_mode', 0)
            self.write(servo_id, 'p_coefficient', settings.p_coefficient)
            self.write(servo_id, 'd_coefficient', settings.d_coefficient)
            self.write(servo_id, 'i_coefficient', settings.i_coefficient)
            if settings.max_torque is not None:
                self.write(servo_id, 'max_torque', settings.max_torque)
                self.write(servo_id, 'torque_limit', settings.max_torque)
            if settings.protection_current is not None:
                self.write(servo_id, 'protection_current', settings.protection_current)
            if settings.overload_torque is not None:
                self.write(servo_id, 'overload_torque', settings.overload_torque)
        finally:
            self.write(servo_id, 'lock', 1)
        self.write(servo_id, 'acceleration', settings.acceleration)
