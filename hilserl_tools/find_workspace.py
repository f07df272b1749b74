"""`hilserl find-workspace`: the owner moves the limp arm (or the leader arm) through the space
where the task happens; the joint ranges and the end-effector box are shown live and the box is
written into the training config (`task.workspace_min_m` / `workspace_max_m`: the bounds the
driver enforces). Torque stays off throughout; nothing is written to the servos."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from hilserl.configuration.config import ConfigError, load_train_config
from hilserl.configuration.yaml_edit import node_parameters, set_values
from hilserl.messages.conventions import ARM_JOINT_NAMES, JOINT_NAMES
from hilserl.robot.kinematics import SO101Kinematics
from hilserl_tools.terminal import Lines, LiveView, say
from so101_driver.backend import BackendError
from so101_driver.calibration import load_calibration
from so101_driver.feetech_bus import BusError, FeetechBus
from so101_driver.hardware_backend import HardwareBackend, describe_differences

ROUND_M = 0.005   # the box is rounded outward to this (m): a hand never sweeps the exact edge


class WorkspaceSweep:
    """Joint and TCP extremes over the readings of a sweep (ROS- and bus-free)."""

    def __init__(self, kinematics: Optional[SO101Kinematics] = None):
        self.kinematics = kinematics or SO101Kinematics()
        self.joint_min = np.full(len(JOINT_NAMES), math.inf)
        self.joint_max = np.full(len(JOINT_NAMES), -math.inf)
        self.tcp_min = np.full(3, math.inf)
        self.tcp_max = np.full(3, -math.inf)
        self.joints = np.full(len(JOINT_NAMES), math.nan)
        self.tcp = np.full(3, math.nan)
        self.readings = 0

    def add(self, position_rad: Sequence[float]) -> None:
        q = np.asarray(position_rad, np.float64)
        if q.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(q)):
            raise ValueError(f'a reading needs {len(JOINT_NAMES)} finite joint positions, got {q}')
        self.joints = q
        self.tcp = self.kinematics.fk(q[:len(ARM_JOINT_NAMES)])[:3, 3]
        self.joint_min = np.minimum(self.joint_min, q)
        self.joint_max = np.maximum(self.joint_max, q)
        self.tcp_min = np.minimum(self.tcp_min, self.tcp)
        self.tcp_max = np.maximum(self.tcp_max, self.tcp)
        self.readings += 1

    def box(self, z_floor_m: float) -> Tuple[List[float], List[float]]:
        """(min, max) xyz in m, rounded outward to ROUND_M, the bottom no lower than the floor."""
        if not self.readings:
            raise ValueError('no reading: the arm was not read')
        low = np.floor(self.tcp_min / ROUND_M) * ROUND_M
        high = np.ceil(self.tcp_max / ROUND_M) * ROUND_M
        low[2] = max(low[2], z_floor_m)
        return [round(float(v), 3) for v in low], [round(float(v), 3) for v in high]

    def line(self) -> str:
        box = [np.round(v, 3).tolist() for v in (self.tcp_min, self.tcp_max)]
        return f'tcp now {np.round(self.tcp, 3).tolist()} m, box {box[0]} .. {box[1]}'

    def table(self) -> str:
        rows = [f'{"":<14} {"min":>8} {"now":>8} {"max":>8}']
        for k, name in enumerate(JOINT_NAMES):
            rows.append(f'{name + " (rad)":<14} {self.joint_min[k]:>8.3f} {self.joints[k]:>8.3f} '
                        f'{self.joint_max[k]:>8.3f}')
        for k, axis in enumerate('xyz'):
            rows.append(f'{"tcp " + axis + " (m)":<14} {self.tcp_min[k]:>8.3f} '
                        f'{self.tcp[k]:>8.3f} {self.tcp_max[k]:>8.3f}')
        return '\n'.join(rows)


def open_arm(robot_config: str, leader: bool):
    """(bus, backend) of the follower (the robot file's so101_driver section) or the leader
    (its teleop section), torque off. One-line errors for a missing port or calibration."""
    section = 'teleop' if leader else 'so101_driver'
    params = node_parameters(robot_config, section)
    port = params.get('leader_port' if leader else 'port')
    calibration = params.get('leader_calibration_file' if leader else 'calibration_file')
    timeout_ms = params.get('leader_bus_timeout_ms' if leader else 'bus_timeout_ms') or None
    if not port or not calibration:
        names = 'leader_port and leader_calibration_file' if leader else \
            'port and calibration_file'
        raise ValueError(f'{robot_config}: its /**/{section} section needs {names}')
    bus = FeetechBus(str(port), int(params.get('baudrate', 1_000_000)), timeout_ms=timeout_ms)
    try:
        calibration_map = load_calibration(Path(str(calibration)).expanduser())
        bus.open()
        backend = HardwareBackend(bus, calibration_map)
        backend.set_torque(False)   # the owner moves it by hand
        differences = backend.calibration_differences()
        if differences:  # positions would be misread, and the box with them
            raise BackendError(f'the servos hold another calibration than {calibration} '
                               f'({describe_differences(differences)}): run `hilserl '
                               'calibrate` first')
    except (BusError, BackendError) as exc:  # a wrong port, no servo: one line, no traceback
        bus.close()
        raise OSError(f'{"leader" if leader else "follower"} arm on {port}: {exc}') from None
    except Exception:
        bus.close()
        raise
    return bus, backend


def run_find_workspace(robot_config: str, config: str, leader: bool = False,
                       seconds: Optional[float] = None, z_floor_m: float = 0.01,
                       rate_hz: float = 10.0, stdin: Optional[TextIO] = None,
                       out: Callable[[str], None] = say) -> int:
    stdin = sys.stdin if stdin is None else stdin
    cfg_path = Path(config)
    cfg = load_train_config(cfg_path)   # a broken config is refused before the arm moves
    bus, backend = open_arm(robot_config, leader)
    sweep = WorkspaceSweep()
    view = LiveView(out)
    lines = None if seconds else Lines(stdin)
    out(f'torque is off: move the {"leader " if leader else ""}arm through the space of the task '
        f'(the gripper where it must reach, and the home pose {list(cfg.task.reset_tcp_xyz_m)}), '
        + (f'for {seconds:g} s' if seconds else 'then press Enter'))
    started = time.monotonic()
    try:
        while True:
            try:
                sweep.add(backend.read().position)
            except BackendError as exc:  # a servo stopped answering: the sweep so far stands
                out(f'reading the arm failed ({exc}); the box stops at what was swept')
                break
            view.show(sweep.table, sweep.line)
            if lines.pressed() if lines else time.monotonic() - started >= seconds:
                break
            time.sleep(1.0 / rate_hz)
    finally:
        bus.close()   # torque stays off: the arm was limp the whole time
    low, high = sweep.box(z_floor_m)
    out(sweep.table())
    reset = np.asarray(cfg.task.reset_tcp_xyz_m)
    if np.any(reset < low) or np.any(reset > high):
        raise ValueError(f'the swept box {low} .. {high} m leaves out the home TCP '
                         f'{list(cfg.task.reset_tcp_xyz_m)}: sweep through the home pose too '
                         f'(or change task.reset_tcp_xyz_m in {cfg_path}); nothing was written')
    values = {'task.workspace_min_m': low, 'task.workspace_max_m': high}
    set_values(cfg_path, values)
    try:
        load_train_config(cfg_path)
    except ConfigError as exc:
        raise ValueError(f'{cfg_path}: the new box is refused ({exc})') from None
    out(f'workspace box {low} .. {high} m written to {cfg_path} (task.workspace_min_m / '
        f'task.workspace_max_m; z no lower than {z_floor_m} m); {sweep.readings} readings')
    return 0
