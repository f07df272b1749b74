"""The SO-101 driver's logic, free of ROS: command validation, watchdog, e-stop, reset, goal
slewing, and health bookkeeping. `driver_node.py` only converts messages and calls this."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from hilserl.conventions import JOINT_NAMES
from hilserl.kinematics import SO101Kinematics
from so101_driver.backend import ArmBackend, BackendError, JointReading
from so101_driver.ee_control import EEControlConfig, EEController, home_joint_goal

from hilserl.diagnostics import ERROR, OK, WARN, DiagnosticEntry


@dataclass(frozen=True)
class DriverConfig:
    ee: EEControlConfig = field(default_factory=EEControlConfig)
    command_timeout_s: float = 0.5          # no valid command for this long -> hold
    max_joint_velocity_rad_s: float = 3.0   # slew limit of written goals (per tick)
    reset_velocity_rad_s: float = 0.8       # slower while going home
    reset_tolerance_rad: float = 0.03
    reset_tcp_xyz_m: Tuple[float, float, float] = (0.25, 0.0, 0.07)
    reset_gripper_rad: float = 0.7
    random_ee_reset: bool = True
    random_ee_range_xy_m: float = 0.03
    temperature_warn_c: float = 60.0
    temperature_error_c: float = 75.0

    def __post_init__(self):
        for name in ('command_timeout_s', 'max_joint_velocity_rad_s', 'reset_velocity_rad_s',
                     'reset_tolerance_rad'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f'{name}={value!r}: must be a finite number > 0')
        if not 0 <= self.random_ee_range_xy_m <= 0.1:
            raise ValueError(f'random_ee_range_xy_m={self.random_ee_range_xy_m}: must be in '
                             '[0, 0.1] m')
        if self.temperature_warn_c >= self.temperature_error_c:
            raise ValueError('temperature_warn_c must be below temperature_error_c')


class DriverCore:
    """Owns the goal sent to the backend. Modes: idle | ee | joint | reset | estop."""

    def __init__(self, backend: ArmBackend, config: DriverConfig,
                 kinematics: Optional[SO101Kinematics] = None, seed: int = 0):
        self.backend = backend
        self.cfg = config
        self.kin = kinematics or SO101Kinematics()
        self.controller = EEController(self.kin, config.ee)
        self.rng = np.random.default_rng(seed)
        self._lo = np.append(self.kin.lower, self.kin.gripper_limits[0])
        self._hi = np.append(self.kin.upper, self.kin.gripper_limits[1])
        self.mode = 'idle'
        self.tcp_target_m = None   # last commanded TCP position (after workspace clamping)
        self.reading: Optional[JointReading] = None
        self.target: Optional[np.ndarray] = None
        self.written: Optional[np.ndarray] = None
        self.last_command_s: Optional[float] = None
        self.counters = {'rejected_commands': 0, 'watchdog_holds': 0, 'read_failures': 0,
                         'write_failures': 0, 'workspace_clamps': 0, 'estops': 0}
        self.consecutive_read_failures = 0
        self.last_error = ''
        self.last_reject_reason = ''

    # --- commands ---------------------------------------------------------------------------
    def _reject(self, reason: str) -> Tuple[bool, str]:
        self.counters['rejected_commands'] += 1
        self.last_reject_reason = reason
        return False, reason

    def _ready_for_commands(self) -> Optional[str]:
        if self.mode == 'estop':
            return 'emergency stop engaged: clear it first'
        if self.reading is None:
            return 'no joint reading yet'
        if not self.backend.torque_enabled:
            return 'torque is off'
        if self.mode == 'reset':
            return 'reset in progress'
        return None

    def ee_action(self, values, now_s: float) -> Tuple[bool, str]:
        action = np.asarray(values, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            return self._reject(f'EE action needs 4 values [dx, dy, dz, gripper], got {action.size}')
        if not np.all(np.isfinite(action)):
            return self._reject(f'EE action has non-finite values {action.tolist()}')
        busy = self._ready_for_commands()
        if busy:
            return self._reject(busy)
        if self.mode != 'ee':
            self.controller.reset(self.written if self.written is not None
                                  else self.reading.position)
        step = self.controller.step(self.reading.position, action)
        self.counters['workspace_clamps'] += step.clamped_to_workspace
        self.target = step.joint_goal_rad
        self.tcp_target_m = step.tcp_target_m
        self.mode = 'ee'
        self.last_command_s = now_s
        return True, ''

    def joint_command(self, values, now_s: float) -> Tuple[bool, str]:
        goal = np.asarray(values, dtype=np.float64).reshape(-1)
        if goal.shape != (6,):
            return self._reject(f'joint command needs 6 positions {list(JOINT_NAMES)}, '
                                f'got {goal.size}')
        if not np.all(np.isfinite(goal)):
            return self._reject(f'joint command has non-finite values {goal.tolist()}')
        busy = self._ready_for_commands()
        if busy:
            return self._reject(busy)
        self.target = np.clip(goal, self._lo, self._hi)
        self.mode = 'joint'
        self.last_command_s = now_s
        return True, ''

    def begin_reset(self, random_offset: Optional[bool] = None) -> np.ndarray:
        """Go home (top-down at reset_tcp_xyz_m, optional random xy offset)."""
        if self.mode == 'estop':
            raise RuntimeError('emergency stop engaged: clear it before resetting')
        use_random = self.cfg.random_ee_reset if random_offset is None else random_offset
        home = home_joint_goal(self.kin, self.cfg.reset_tcp_xyz_m, self.cfg.reset_gripper_rad,
                               self.cfg.random_ee_range_xy_m if use_random else 0.0, self.rng)
        self.target = np.clip(home, self._lo, self._hi)
        self.mode = 'reset'
        return self.target.copy()

    def set_estop(self, engaged: bool) -> None:
        if engaged:
            self.counters['estops'] += self.mode != 'estop'
            self.mode = 'estop'
            hold = self.reading.position if self.reading is not None else self.written
            if hold is not None:
                self.target = hold.copy()
                self.written = hold.copy()
                self._write(self.written)
        elif self.mode == 'estop':
            self.mode = 'idle'
            self.controller.reset()

    def set_torque(self, enabled: bool) -> None:
        self.backend.set_torque(enabled)
        if enabled and self.reading is not None:
            # Torque returns holding where the arm is, never at a stale goal.
            self.target = self.reading.position.copy()
            self.written = self.reading.position.copy()
            self.controller.reset()

    # --- periodic ---------------------------------------------------------------------------
    def tick(self, now_s: float, dt_s: float) -> Optional[JointReading]:
        """Read, apply the watchdog, slew the goal and write it. Returns the reading or None."""
        try:
            reading = self.backend.read()
        except BackendError as exc:
            self.counters['read_failures'] += 1
            self.consecutive_read_failures += 1
            self.last_error = str(exc)
            return None  # servos keep their last goal: the arm holds
        self.consecutive_read_failures = 0
        self.reading = reading
        if self.written is None:
            self.written = reading.position.copy()
            self.target = reading.position.copy()
        if self.mode in ('ee', 'joint') and self.last_command_s is not None and \
                now_s - self.last_command_s > self.cfg.command_timeout_s:
            self.counters['watchdog_holds'] += 1
            self.target = self.written.copy()
            self.mode = 'idle'
        if not self.backend.torque_enabled or self.mode == 'estop':
            return reading
        speed = self.cfg.reset_velocity_rad_s if self.mode == 'reset' \
            else self.cfg.max_joint_velocity_rad_s
        max_step = speed * dt_s
        step = np.clip(self.target - self.written, -max_step, max_step)
        self.written = np.clip(self.written + step, self._lo, self._hi)
        self._write(self.written)
        if self.mode == 'reset' and np.all(np.abs(reading.position - self.target)[:5]
                                           < self.cfg.reset_tolerance_rad) \
                and np.allclose(self.written, self.target):
            self.mode = 'idle'
            self.controller.reset()
        return reading

    def _write(self, goal: np.ndarray) -> None:
        try:
            self.backend.write_goal(goal)
        except BackendError as exc:
            self.counters['write_failures'] += 1
            self.last_error = str(exc)

    @property
    def ready(self) -> bool:
        return self.mode in ('idle', 'ee', 'joint') and self.reading is not None and \
            self.consecutive_read_failures == 0 and self.backend.torque_enabled

    # --- diagnostics ------------------------------------------------------------------------
    def diagnostics(self, health=None, bus_stats=None) -> List[DiagnosticEntry]:
        if self.consecutive_read_failures > 0:
            level, message = ERROR, f'arm not answering ({self.consecutive_read_failures} ' \
                                    f'reads failed): holding; {self.last_error}'
        elif self.mode == 'estop':
            level, message = WARN, 'emergency stop engaged'
        elif not self.backend.torque_enabled:
            level, message = WARN, 'torque off'
        else:
            level, message = OK, f'mode {self.mode}'
        values = {k: str(v) for k, v in self.counters.items()}
        values.update(mode=self.mode, last_error=self.last_error,
                      last_reject_reason=self.last_reject_reason)
        if bus_stats is not None:
            values.update(bus_transactions=str(bus_stats.transactions),
                          bus_retries=str(bus_stats.retries),
                          bus_failures=str(bus_stats.failures),
                          bus_errors_by_id=str(bus_stats.errors_by_id),
                          servo_status_errors_by_id=str(bus_stats.status_errors_by_id))
        entries = [DiagnosticEntry('so101_driver: arm', level, message, values)]
        for joint, h in (health or {}).items():
            if h.temperature_c >= self.cfg.temperature_error_c:
                lvl, msg = ERROR, f'{h.temperature_c} C: overheating'
            elif h.temperature_c >= self.cfg.temperature_warn_c or h.status:
                lvl, msg = WARN, f'{h.temperature_c} C, status {h.status}'
            else:
                lvl, msg = OK, f'{h.temperature_c} C, {h.voltage_v:.1f} V'
            entries.append(DiagnosticEntry(
                f'so101_driver: {joint}', lvl, msg,
                {'temperature_c': str(h.temperature_c), 'voltage_v': f'{h.voltage_v:.1f}',
                 'status': str(h.status)}))
        return entries
