"""The SO-101 driver's logic, free of ROS: command validation, watchdog, e-stop, reset, goal
slewing, health bookkeeping and the exit sequence. `driver_node.py` only converts messages and
calls this."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.messages.conventions import JOINT_NAMES
from hilserl.messages.conversions import ACTION_BOUND_TOLERANCE
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.configuration.parameters import param
from so101_driver.backend import ArmBackend, BackendError, JointReading
from so101_driver.ee_control import (TASK_DEFAULTS, EEControlConfig, EEController,
                                     home_joint_goal)
from so101_driver.sts_protocol import error_text

from hilserl.messages.diagnostics import ERROR, OK, WARN, DiagnosticEntry


@dataclass(frozen=True)
class DriverConfig:
    ee: EEControlConfig = field(default_factory=EEControlConfig)
    command_timeout_s: float = param(0.5, 'hold position when no valid command arrives for this '
                                     'long (s)', float_range=(0.05, 10.0))
    max_joint_velocity_rad_s: float = param(3.0, 'slew limit of joint goals (rad/s)',
                                            float_range=(0.1, 6.0))
    reset_velocity_rad_s: float = param(0.8, 'joint speed while going home (rad/s)',
                                        float_range=(0.1, 3.0))
    reset_tolerance_rad: float = 0.03
    reset_safe_height_m: float = param(0.12, 'a reset from lower first lifts the TCP straight up '
                                       'to this height above the table, then goes home (m)',
                                       float_range=(0.0, 0.4))
    reset_tcp_xyz_m: Tuple[float, float, float] = param(
        TASK_DEFAULTS.reset_tcp_xyz_m, 'home TCP position in base_link (m)')
    reset_gripper_rad: float = param(TASK_DEFAULTS.reset_gripper_rad, 'gripper at home (rad)',
                                     float_range=(-0.17, 1.74))
    random_ee_reset: bool = param(TASK_DEFAULTS.random_ee_reset,
                                  'randomise the home TCP in x/y on reset')
    random_ee_range_xy_m: float = param(TASK_DEFAULTS.random_ee_range_xy_m,
                                        '+- range of the reset randomisation (m)',
                                        float_range=(0.0, 0.1))
    # Reads that fail in a row (each after the bus's own retries) before the driver says not
    # ready: one lost reply on a noisy bus must not pause the episode or restart the person's
    # re-place count-down; at the 100 Hz tick, 5 is 50 ms of holding without a reading.
    read_failures_before_not_ready: int = param(
        5, 'failed reads in a row before driver/ready goes false (the episode pauses)',
        int_range=(1, 100))
    temperature_warn_c: float = 60.0
    temperature_error_c: float = 75.0
    # Exit (DriverCore.shutdown): folded, TCP ~4 cm above the base plate, gripper closed.
    rest_pose_rad: Tuple[float, ...] = (0.0, -1.65, 1.6, 0.75, 0.0, 0.0)
    rest_velocity_rad_s: float = 0.5
    rest_tolerance_rad: float = 0.05
    shutdown_timeout_s: float = 6.0   # motion budget; launch's sigterm_timeout must exceed it

    def __post_init__(self):
        for name in ('command_timeout_s', 'max_joint_velocity_rad_s', 'reset_velocity_rad_s',
                     'reset_tolerance_rad', 'rest_velocity_rad_s', 'rest_tolerance_rad',
                     'shutdown_timeout_s'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f'{name}={value!r}: must be a finite number > 0')
        if not 0 <= self.random_ee_range_xy_m <= 0.1:
            raise ValueError(f'random_ee_range_xy_m={self.random_ee_range_xy_m}: must be in '
                             '[0, 0.1] m')
        if not (isinstance(self.read_failures_before_not_ready, int)
                and self.read_failures_before_not_ready >= 1):
            raise ValueError(f'read_failures_before_not_ready='
                             f'{self.read_failures_before_not_ready!r}: must be an integer >= 1')
        if self.temperature_warn_c >= self.temperature_error_c:
            raise ValueError('temperature_warn_c must be below temperature_error_c')
        _check_pose('rest_pose_rad', self.rest_pose_rad)


def _check_pose(name: str, pose) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    if pose.shape != (6,) or not np.all(np.isfinite(pose)):
        raise ValueError(f'{name}={pose.tolist()}: needs 6 finite joint positions (rad) '
                         f'{list(JOINT_NAMES)}')
    return pose


EXIT_MODES = ('rest_then_torque_off', 'hold', 'torque_off')


def tick_step_s(now_s: float, last_s: Optional[float], nominal_s: float) -> float:
    """The time a control tick advances by: what really passed since the last one (a late tick
    on a busy CPU must not slow the arm or the simulated world down), capped at five nominal
    periods so that a stall cannot jump; the nominal period for the first tick."""
    if last_s is None:
        return nominal_s
    return min(max(now_s - last_s, 0.0), 5 * nominal_s)


@dataclass(frozen=True)
class ShutdownReport:
    mode: str
    reached_rest: bool
    torque_off: bool
    duration_s: float
    message: str


class DriverCore:
    """Owns the goal sent to the backend. Modes: idle | ee | joint | reset | estop | shutdown."""

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
        self.reset_waypoints: List[np.ndarray] = []   # a reset's goals after the current one
        self.reset_home: Optional[np.ndarray] = None
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
        self._shutdown_velocity_rad_s = config.rest_velocity_rad_s

    # --- commands ---------------------------------------------------------------------------
    def _reject(self, reason: str) -> Tuple[bool, str]:
        self.counters['rejected_commands'] += 1
        self.last_reject_reason = reason
        return False, reason

    def _ready_for_commands(self) -> Optional[str]:
        if self.mode == 'estop':
            return 'emergency stop engaged: clear it first'
        if self.mode == 'shutdown':
            return 'driver is shutting down'
        if self.reading is None:
            return 'no joint reading yet'
        lost = self.torque_lost
        if lost:
            return f'{self._lost_text(lost)}: re-enable torque first'
        if not self.backend.torque_enabled:
            return 'torque is off'
        if self.mode == 'reset':
            return 'reset in progress'
        return None

    def ee_action(self, values, now_s: float) -> Tuple[bool, str]:
        action = np.asarray(values, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            return self._reject(f'EE action needs 4 values [dx, dy, dz, gripper], '
                                f'got {action.size}')
        if not np.all(np.isfinite(action)):
            return self._reject(f'EE action has non-finite values {action.tolist()}')
        if np.any(np.abs(action) > 1.0 + ACTION_BOUND_TOLERANCE):
            return self._reject(f'EE action {action.tolist()} leaves [-1, 1]')
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
        home = np.clip(home, self._lo, self._hi)
        self._plan_reset(home)
        self.mode = 'reset'
        return home.copy()

    def _plan_reset(self, home: np.ndarray) -> None:
        """The reset's goals from where the arm is: a joint-space move from low down can
        sweep the table (and the cube), so the TCP first rises straight up, then goes home."""
        self.reset_home = home
        self.reset_waypoints = [home]
        lifted = self._lifted_pose()
        if lifted is not None:
            self.reset_waypoints.insert(0, lifted)
        self.target = self.reset_waypoints.pop(0)

    def _lifted_pose(self) -> Optional[np.ndarray]:
        """Joints with the TCP straight above where it is, at reset_safe_height_m, top-down
        (gripper as it is); None when it is that high already, or no reading or IK solution."""
        if self.reading is None:
            return None
        q = self.reading.position
        tcp = self.kin.fk(q[:5])[:3, 3]
        if tcp[2] >= self.cfg.reset_safe_height_m:
            return None
        target = np.array([tcp[0], tcp[1], self.cfg.reset_safe_height_m])
        result = self.kin.ik_position(target, q[:5], hold_approach=np.array([0, 0, -1.0]))
        if not result.converged:
            return None
        return np.clip(np.append(result.q, q[5]), self._lo, self._hi)

    def placed_at(self, reading: JointReading, goal: np.ndarray) -> None:
        """The arm was put at `goal` (a simulation reset teleports it) and reads `reading`: hold
        there, idle, so that the next EE action starts from here."""
        self.reading = reading
        self.written = goal.copy()
        self.target = goal.copy()
        self.reset_waypoints = []
        self.mode = 'idle'
        self.controller.reset()

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
            if self.mode == 'reset' and self.reset_home is not None:
                # re-armed during a reset (a lock-out while going home): the reset goes on
                # from here, lifting first again where the arm is low
                self._plan_reset(self.reset_home)

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
        speed = {'reset': self.cfg.reset_velocity_rad_s,
                 'shutdown': self._shutdown_velocity_rad_s}.get(self.mode,
                                                                self.cfg.max_joint_velocity_rad_s)
        max_step = speed * dt_s
        step = np.clip(self.target - self.written, -max_step, max_step)
        self.written = np.clip(self.written + step, self._lo, self._hi)
        self._write(self.written)
        if self.mode == 'reset' and np.all(np.abs(reading.position - self.target)[:5]
                                           < self.cfg.reset_tolerance_rad) \
                and np.allclose(self.written, self.target):
            if self.reset_waypoints:  # lifted: now home
                self.target = self.reset_waypoints.pop(0)
            else:
                self.mode = 'idle'
                self.controller.reset()
        return reading

    def _write(self, goal: np.ndarray) -> None:
        try:
            self.backend.write_goal(goal)
        except BackendError as exc:
            self.counters['write_failures'] += 1
            self.last_error = str(exc)

    # --- health ---------------------------------------------------------------------------
    @property
    def torque_lost(self) -> Dict[str, str]:
        """Joints whose servo dropped its own torque (joint -> why); empty on backends that
        cannot tell. Cleared by set_torque(True)."""
        return dict(getattr(self.backend, 'torque_lost', None) or {})

    @staticmethod
    def _lost_text(lost: Dict[str, str]) -> str:
        return 'servo dropped its torque: ' + '; '.join(f'{j} {why}' for j, why in lost.items())

    @property
    def lockout(self) -> Optional[str]:
        """What locks the arm out and what to do, in one line; None while it is not."""
        lost = self.torque_lost
        if not lost:
            return None
        return (f'arm locked out, {self._lost_text(lost)}: holding, commands refused. Let the '
                'servo cool down (or free what blocks it), then run `hilserl torque on` (or '
                'call the driver\'s torque service with true)')

    @property
    def ready(self) -> bool:
        """Accepting commands: a reading that is not failing for long, torque held by every
        servo, no e-stop/reset."""
        return self.mode in ('idle', 'ee', 'joint') and self.reading is not None and \
            self.consecutive_read_failures < self.cfg.read_failures_before_not_ready and \
            not self.torque_lost and self.backend.torque_enabled

    # --- diagnostics ------------------------------------------------------------------------
    def diagnostics(self, health=None, bus_stats=None) -> List[DiagnosticEntry]:
        """Arm entry (ERROR while reads fail or a servo dropped its torque) and, given
        HardwareBackend.read_health(), one entry per joint; bus_stats adds the bus counters."""
        lost = self.torque_lost
        errors = []
        if self.consecutive_read_failures > 0:
            errors.append(f'arm not answering ({self.consecutive_read_failures} reads failed): '
                          f'holding; {self.last_error}')
        if lost:
            errors.append(f'{self._lost_text(lost)}: holding, commands refused until torque is '
                          're-enabled (torque service)')
        if errors:
            level, message = ERROR, ' | '.join(errors)
        elif self.mode == 'estop':
            level, message = WARN, 'emergency stop engaged'
        elif self.mode == 'shutdown':
            level, message = WARN, 'shut down'
        elif not self.backend.torque_enabled:
            level, message = WARN, 'torque off'
        else:
            level, message = OK, f'mode {self.mode}'
        values = {k: str(v) for k, v in self.counters.items()}
        values.update(mode=self.mode, last_error=self.last_error,
                      last_reject_reason=self.last_reject_reason,
                      torque_lost=str(lost) if lost else '')
        joint_of_id = getattr(self.backend, 'joint_of_id', {})
        if bus_stats is not None:
            last = bus_stats.last_fault
            values.update(bus_transactions=str(bus_stats.transactions),
                          bus_retries=str(bus_stats.retries),
                          bus_failures=str(bus_stats.failures),
                          bus_faults=str(bus_stats.faults),
                          bus_faults_by_kind=str(bus_stats.faults_by_kind),
                          bus_errors_by_id=str(bus_stats.errors_by_id),
                          bus_port_reopens=str(bus_stats.port_reopens),
                          bus_last_fault='' if last is None else
                          f'{joint_of_id.get(last.servo_id, "bus")}: {last}',
                          servo_status_errors_by_id=str(bus_stats.status_errors_by_id))
        entries = [DiagnosticEntry('so101_driver: arm', level, message, values)]
        id_of_joint = {j: i for i, j in joint_of_id.items()}
        for joint, h in (health or {}).items():
            status_text = error_text(h.status)
            parts = [f'{h.temperature_c} C', f'{h.voltage_v:.1f} V']
            if h.status:
                parts.append(status_text)
            if joint in lost:
                lvl = ERROR
                parts.append(f'torque lost ({lost[joint]})')
            elif h.temperature_c >= self.cfg.temperature_error_c:
                lvl = ERROR
            elif h.temperature_c >= self.cfg.temperature_warn_c or h.status:
                lvl = WARN
            else:
                lvl = OK
            if h.temperature_c >= self.cfg.temperature_error_c:
                parts[0] += ': overheating'
            joint_values = {'temperature_c': str(h.temperature_c),
                            'voltage_v': f'{h.voltage_v:.1f}', 'status': str(h.status),
                            'status_text': status_text,
                            'torque': 'lost' if joint in lost else
                            ('on' if getattr(h, 'torque_on', True) else 'off')}
            if bus_stats is not None and joint in id_of_joint:
                servo_id = id_of_joint[joint]
                joint_values.update(servo_id=str(servo_id),
                                    bus_faults=str(bus_stats.errors_by_id.get(servo_id, 0)),
                                    reply_status_errors=str(
                                        bus_stats.status_errors_by_id.get(servo_id, 0)))
            entries.append(DiagnosticEntry(f'so101_driver: {joint}', lvl, ', '.join(parts),
                                           joint_values))
        return entries

    # --- exit -------------------------------------------------------------------------------
    def shutdown(self, mode: str = 'rest_then_torque_off',
                 rest_pose_rad: Optional[Sequence[float]] = None,
                 velocity_rad_s: Optional[float] = None, timeout_s: Optional[float] = None,
                 rate_hz: float = 50.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> ShutdownReport:
        """Leave the arm on exit; never raises for bus faults. Commands are refused afterwards.

        rest_then_torque_off: slew every joint to rest_pose_rad at velocity_rad_s (defaults
          from DriverConfig), reading and writing at rate_hz, for at most timeout_s, then torque
          off (even if rest was not reached in time: the report says so). With the e-stop
          engaged it holds instead (an e-stop forbids motion, and torque off drops the arm).
          A KeyboardInterrupt during the motion ends it early; torque still goes off.
        hold: write the present position as the goal once; torque stays on.
        torque_off: torque off now (the arm falls).
        Worst case takes timeout_s plus the read in flight and the torque-off write and
        read-back, each a bus operation with its retries (~0.1 s each with the SDK's timeout
        on a dead bus)."""
        if mode not in EXIT_MODES:
            raise ValueError(f'on_exit={mode!r}: must be one of {list(EXIT_MODES)}')
        rest = _check_pose('rest_pose_rad', self.cfg.rest_pose_rad if rest_pose_rad is None
                           else rest_pose_rad)
        rest = np.clip(rest, self._lo, self._hi)
        budget_s = self.cfg.shutdown_timeout_s if timeout_s is None else float(timeout_s)
        self._shutdown_velocity_rad_s = self.cfg.rest_velocity_rad_s if velocity_rad_s is None \
            else float(velocity_rad_s)
        start = clock()
        estop = self.mode == 'estop'
        self.mode = 'shutdown'

        def report(reached, torque_off, message):
            return ShutdownReport(mode, reached, torque_off, clock() - start, message)

        if mode == 'hold' or (mode == 'rest_then_torque_off' and estop):
            self._hold_here()
            why = 'emergency stop engaged: ' if mode != 'hold' else ''
            return report(False, False, f'{why}holding the present position, torque stays on')
        reached = False
        notes = []
        if mode == 'rest_then_torque_off':
            if self.torque_lost or not self.backend.torque_enabled:
                notes.append('no move to rest: ' + (self._lost_text(self.torque_lost)
                                                    if self.torque_lost else 'torque was off'))
            else:
                try:
                    reached = self._move_to(rest, budget_s, rate_hz, clock, sleep)
                except KeyboardInterrupt:
                    # A second Ctrl-C cuts the motion short; torque still goes off below.
                    notes.append('move to rest interrupted')
                else:
                    notes.append('reached rest' if reached else
                                 f'rest not reached within {budget_s:g} s ({self.last_error})'
                                 if self.consecutive_read_failures else
                                 f'rest not reached within {budget_s:g} s')
        try:
            self.backend.set_torque(False)
        except BackendError as exc:
            self.last_error = str(exc)
            return report(reached, False, '; '.join(notes + [f'torque off FAILED: {exc}']))
        return report(reached, True, '; '.join(notes + ['torque off']))

    def _hold_here(self) -> None:
        try:
            reading = self.backend.read()
        except BackendError as exc:
            self.last_error = str(exc)
            return  # the servos keep their last goal
        self.reading = reading
        self.target = reading.position.copy()
        self.written = reading.position.copy()
        self._write(self.written)

    def _move_to(self, rest: np.ndarray, budget_s: float, rate_hz: float, clock, sleep) -> bool:
        """Slew to `rest` through tick() (mode 'shutdown'); True once the arm is there."""
        period = 1.0 / rate_hz
        start = last = clock()
        while clock() - start < budget_s:
            now = clock()
            self.target = rest.copy()  # (a first reading inside tick() seeds target: re-aim)
            reading = self.tick(now, tick_step_s(now, last, period))
            last = now
            if reading is not None and np.allclose(self.written, rest) and \
                    np.all(np.abs(reading.position - rest)[:5] < self.cfg.rest_tolerance_rad):
                return True  # the gripper may be blocked by an object: arm joints decide
            sleep(max(0.0, period - (clock() - now)))
        return False
