"""Feetech STS3215 bus access through `feetech-servo-sdk` (scservo_sdk).

All bus traffic goes through one lock (the SDK's port is not thread-safe). Transient failures
are retried with bounded backoff and counted per servo; persistent ones raise `BusError` naming
the silent servos, so the caller can hold and report instead of crashing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence

from so101_driver import sts_protocol as sts


class BusError(RuntimeError):
    def __init__(self, message: str, failed_ids: Sequence[int] = ()):
        super().__init__(message)
        self.failed_ids = tuple(failed_ids)


@dataclass
class BusStats:
    transactions: int = 0
    retries: int = 0
    failures: int = 0
    errors_by_id: Dict[int, int] = field(default_factory=dict)
    status_errors_by_id: Dict[int, int] = field(default_factory=dict)
    last_error: str = ''


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


class FeetechBus:
    def __init__(self, port: str, baudrate: int = 1_000_000, retries: int = 2,
                 backoff_s: float = 0.002, timeout_ms: Optional[float] = None):
        import scservo_sdk as scs
        self._scs = scs
        self.port_name = port
        self.baudrate = baudrate
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_ms = timeout_ms
        self.stats = BusStats()
        self._lock = threading.Lock()
        self._port = None
        self._packet = None

    # --- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        scs = self._scs
        port = scs.PortHandler(self.port_name)
        try:
            opened = port.openPort()
        except Exception as exc:  # noqa: BLE001 - pyserial raises several types
            raise BusError(f'cannot open serial port {self.port_name!r}: {exc}') from None
        if not opened:
            raise BusError(f'cannot open serial port {self.port_name!r}')
        if not port.setBaudRate(self.baudrate):
            port.closePort()
            raise BusError(f'baud rate {self.baudrate} refused for {self.port_name!r}')
        self._port = port
        self._packet = scs.PacketHandler(0)  # protocol 0: STS/SMS, little endian

    def close(self) -> None:
        with self._lock:
            if self._port is not None:
                self._port.closePort()
                self._port = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    # --- helpers ----------------------------------------------------------------------------
    def _require_open(self):
        if self._port is None:
            raise BusError(f'bus {self.port_name!r} is not open')

    def _count_error(self, servo_id: int, text: str):
        self.stats.errors_by_id[servo_id] = self.stats.errors_by_id.get(servo_id, 0) + 1
        self.stats.last_error = text

    def _check_status(self, servo_id: int, error_byte: int):
        if error_byte:
            self.stats.status_errors_by_id[servo_id] = \
                self.stats.status_errors_by_id.get(servo_id, 0) + 1
            self.stats.last_error = f'servo {servo_id} reports {sts.error_text(error_byte)}'

    def _retrying(self, what: str, servo_ids: Sequence[int], attempt):
        """Run attempt() -> (ok, detail) up to 1 + retries times with growing backoff."""
        self._require_open()
        detail = ''
        for i in range(self.retries + 1):
            self.stats.transactions += 1
            with self._lock:
                ok, detail = attempt()
            if ok:
                return
            self.stats.retries += i < self.retries
            time.sleep(self.backoff_s * (2 ** i))
        self.stats.failures += 1
        raise BusError(f'{what} failed after {self.retries + 1} attempts: {detail}', servo_ids)

    # --- single-servo access ----------------------------------------------------------------
    def ping(self, servo_id: int) -> int:
        """Model number of a servo (777 for an STS3215)."""
        result = {}

        def attempt():
            model, comm, error = self._packet.ping(self._port, servo_id)
            if comm != self._scs.COMM_SUCCESS:
                self._count_error(servo_id, self._packet.getTxRxResult(comm))
                return False, f'servo {servo_id}: {self._packet.getTxRxResult(comm)}'
            self._check_status(servo_id, error)
            result['model'] = model
            return True, ''
        self._retrying(f'ping {servo_id}', [servo_id], attempt)
        return result['model']

    def read(self, servo_id: int, name: str) -> int:
        reg = sts.REGISTERS[name]
        result = {}

        def attempt():
            data, comm, error = self._packet.readTxRx(self._port, servo_id, reg.address, reg.size)
            if comm != self._scs.COMM_SUCCESS:
                self._count_error(servo_id, self._packet.getTxRxResult(comm))
                return False, f'servo {servo_id} {name}: {self._packet.getTxRxResult(comm)}'
            self._check_status(servo_id, error)
            result['value'] = sts.decode(reg, sts.from_bytes(data))
            return True, ''
        self._retrying(f'read {name} from {servo_id}', [servo_id], attempt)
        return result['value']

    def write(self, servo_id: int, name: str, value: int) -> None:
        reg = sts.REGISTERS[name]
        data = list(sts.to_bytes(sts.encode(reg, value), reg.size))

        def attempt():
            comm, error = self._packet.writeTxRx(self._port, servo_id, reg.address, reg.size, data)
            if comm != self._scs.COMM_SUCCESS:
                self._count_error(servo_id, self._packet.getTxRxResult(comm))
                return False, f'servo {servo_id} {name}: {self._packet.getTxRxResult(comm)}'
            self._check_status(servo_id, error)
            return True, ''
        self._retrying(f'write {name}={value} to {servo_id}', [servo_id], attempt)

    # --- group access -----------------------------------------------------------------------
    def sync_read(self, first: str, ids: Sequence[int], names: Sequence[str]
                  ) -> Dict[int, Dict[str, int]]:
        """One SYNC_READ covering registers `names` (contiguous, starting at `first`)."""
        regs = [sts.REGISTERS[n] for n in names]
        start = sts.REGISTERS[first].address
        length = max(r.address + r.size for r in regs) - start
        result: Dict[int, Dict[str, int]] = {}

        def attempt():
            group = self._scs.GroupSyncRead(self._port, self._packet, start, length)
            for servo_id in ids:
                group.addParam(servo_id)
            comm = group.txRxPacket()
            if comm != self._scs.COMM_SUCCESS:
                # Replies stop at the first silent servo: name the ones that did not answer.
                missing = [i for i in ids if not group.isAvailable(i, start, length)]
                for servo_id in missing[:1]:
                    self._count_error(servo_id, self._packet.getTxRxResult(comm))
                return False, (f'{self._packet.getTxRxResult(comm)} '
                               f'(no valid reply from servo(s) {missing})')
            for servo_id in ids:
                raw = group.data_dict[servo_id]
                result[servo_id] = {
                    n: sts.decode(r, sts.from_bytes(raw[r.address - start:r.address - start + r.size]))
                    for n, r in zip(names, regs)}
            return True, ''
        try:
            self._retrying(f'sync read {list(names)}', list(ids), attempt)
        except BusError as exc:
            raise BusError(str(exc), self._find_silent(ids)) from None
        return result

    def _find_silent(self, ids: Sequence[int]) -> Sequence[int]:
        """After a failed sync read: ping each servo once to say which ones are gone."""
        silent = []
        for servo_id in ids:
            with self._lock:
                _model, comm, _err = self._packet.ping(self._port, servo_id)
            if comm != self._scs.COMM_SUCCESS:
                silent.append(servo_id)
        return silent or list(ids)

    def sync_write(self, name: str, values: Mapping[int, int]) -> None:
        """One SYNC_WRITE of a register to several servos (no reply on the wire)."""
        reg = sts.REGISTERS[name]

        def attempt():
            group = self._scs.GroupSyncWrite(self._port, self._packet, reg.address, reg.size)
            for servo_id, value in values.items():
                group.addParam(servo_id, list(sts.to_bytes(sts.encode(reg, value), reg.size)))
            comm = group.txPacket()
            if comm != self._scs.COMM_SUCCESS:
                return False, self._packet.getTxRxResult(comm)
            return True, ''
        self._retrying(f'sync write {name}', list(values), attempt)

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
