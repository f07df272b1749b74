"""An arm behind someone else's joint-level stack (ros2_control: a joint_state_broadcaster and a
forward position controller), without ROS: the driver node feeds it the stack's joint states and
hands its goals to the controller's command topic. End-effector control, the workspace box, slew
limits, the watchdog and resets stay in DriverCore; the servos are the stack's."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver.backend import ArmBackend, BackendError, JointReading


class ExternalJointBackend(ArmBackend):
    def __init__(self, send_goal: Callable[[np.ndarray], None], clock: Callable[[], float],
                 command_joint_order: Sequence[str] = JOINT_NAMES,
                 state_timeout_s: float = 0.5):
        """`send_goal` receives the goal in `command_joint_order` (the controller's `joints`
        parameter); `clock` is the time `on_joint_state` stamps are compared with (s)."""
        order = list(command_joint_order)
        if sorted(order) != sorted(JOINT_NAMES):
            raise ValueError(f'command_joint_order={order}: must name each of '
                             f'{list(JOINT_NAMES)} once')
        if not (math.isfinite(state_timeout_s) and state_timeout_s > 0):
            raise ValueError(f'state_timeout_s={state_timeout_s!r}: must be a number > 0')
        self._to_command = np.array([JOINT_NAMES.index(name) for name in order])
        self._send_goal, self._clock = send_goal, clock
        self.state_timeout_s = state_timeout_s
        self._latest: Optional[JointReading] = None

    def on_joint_state(self, position, velocity, effort, received_s: float) -> None:
        """Joint state of the stack, already in JOINT_NAMES order (rad, rad/s)."""
        self._latest = JointReading(np.asarray(position, np.float64),
                                    np.asarray(velocity, np.float64),
                                    np.asarray(effort, np.float64), received_s)

    def read(self) -> JointReading:
        if self._latest is None:
            raise BackendError('no joint_states from the external controller stack yet')
        age_s = self._clock() - self._latest.stamp_s
        if age_s > self.state_timeout_s:
            raise BackendError(f'external joint_states {age_s:.2f} s old (limit '
                               f'{self.state_timeout_s} s): holding')
        return self._latest

    def write_goal(self, position_rad: np.ndarray) -> None:
        goal = np.asarray(position_rad, np.float64).reshape(-1)
        if goal.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(goal)):
            raise BackendError(f'goal {goal.tolist()}: needs {len(JOINT_NAMES)} finite values')
        self._send_goal(goal[self._to_command])

    def set_torque(self, enabled: bool) -> None:
        # A forward position controller has no torque switch; the hardware interface owns it.
        raise BackendError('torque belongs to the external controller stack (its hardware '
                           'interface): switch it there')

    @property
    def torque_enabled(self) -> bool:
        return True
