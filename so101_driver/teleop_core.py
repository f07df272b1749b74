"""The teleop node's decisions, free of ROS: what each device step publishes (the keyboard's keys
beside a leader arm, labels only), and when the simulated human answers a policy proposal (once
per tick, with that tick's state) and presses "success". `teleop_node.py` reads the devices,
converts messages and publishes what this returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from hilserl.messages.conversions import event_from_json
from hilserl.robot.expert import ScriptedExpert
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.teleop import (LABEL_SUCCESS, GamepadTeleop, KeyboardTeleop, LeaderArmTeleop,
                                  SimHumanTeleop, parse_terminal_keys)

DEVICES = ('keyboard', 'gamepad', 'leader', 'sim', 'none')


@dataclass(frozen=True)
class TeleopConfig:
    device: str = 'sim'
    labels_only: bool = False   # keyboard: the episode labels only (beside a leader arm)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f'device={self.device!r}: must be one of {DEVICES}')

    @property
    def reads_terminal_keys(self) -> bool:
        """The leader arm takes its intervention toggle and labels from the keyboard."""
        return self.device in ('keyboard', 'leader')

    @property
    def publishes_at_control_rate(self) -> bool:
        """Devices publish on a timer; the simulated human answers the policy instead."""
        return self.device not in ('sim', 'none')


@dataclass(frozen=True)
class TeleopMessages:
    """What one teleop step publishes, in this order: the label first (the actor reads it with
    the tick's action), then the intervention flag and the action."""
    label: Optional[str] = None
    action: Optional[np.ndarray] = None   # None: the label alone
    intervention: bool = False
    stamp_ns: Optional[int] = None        # the action's tick; None: the node's clock when sent
    torque_on: bool = False               # the person asked to re-arm (the driver's torque service)


class DeviceTeleop:
    """A human device at the control rate: the node feeds the terminal's keys and the device's
    reading, with the monotonic time of the step."""

    def __init__(self, config: TeleopConfig, kinematics: Optional[SO101Kinematics] = None,
                 ee_step_m: Sequence[float] = (0.02, 0.02, 0.02)):
        self.config = config
        self.keyboard = KeyboardTeleop()
        self.gamepad = GamepadTeleop()
        self.leader = LeaderArmTeleop(kinematics or SO101Kinematics(), ee_step_m)

    def feed_keys(self, terminal_text: str, now_s: float) -> None:
        for key in parse_terminal_keys(terminal_text):
            self.keyboard.feed(key, now_s)

    def keyboard_step(self, now_s: float) -> TeleopMessages:
        out = self.keyboard.output(now_s)
        if self.config.labels_only:
            return TeleopMessages(label=out.label, torque_on=out.torque_on)
        return TeleopMessages(out.label, out.action, out.intervention, torque_on=out.torque_on)

    def gamepad_step(self, axes: Sequence[float], buttons: Sequence[int]) -> TeleopMessages:
        out = self.gamepad.output(axes, buttons)
        return TeleopMessages(out.label, out.action, out.intervention)

    def leader_step(self, now_s: float, read_leader_rad: Callable[[], Sequence[float]]
                    ) -> TeleopMessages:
        """The keyboard's toggle and label go with the leader's motion. Whatever
        `read_leader_rad` raises passes through; the keys of this step are spent by then."""
        keys = self.keyboard.output(now_s)
        out = self.leader.output(read_leader_rad(), keys.intervention)
        return TeleopMessages(keys.label, out.action, out.intervention, torque_on=keys.torque_on)


class SimHumanAnswers:
    """The simulated human in lock-step: the node feeds the tick's state (joints, cube pose,
    ground truth) and the policy's proposals; a proposal is answered once its tick's joints and
    cube pose are both in hand, and only once. An unstamped proposal is answered at each new
    input, stamped with the node's time. "success" is pressed once per episode, when lifted."""

    def __init__(self, human: SimHumanTeleop, kinematics: Optional[SO101Kinematics] = None,
                 expert: Optional[ScriptedExpert] = None):
        self.human = human
        self.kin = kinematics or SO101Kinematics()
        self.expert = expert or ScriptedExpert()
        self.joints = self.cube = None
        self.joints_stamp_ns = self.cube_stamp_ns = None
        self.grasped = self.lifted = self.success_pressed = False
        self.policy_action = None
        self.policy_stamp_ns = None
        self.answered_ns = None

    def on_grasped(self, grasped: bool) -> None:
        self.grasped = bool(grasped)

    def on_lifted(self, lifted: bool) -> None:
        self.lifted = bool(lifted)

    def on_event(self, text: str) -> Optional[str]:
        """An episode/events message; at a start, what to log (the episode's behaviour)."""
        event = event_from_json(text)
        if event is None or event.get('event') != 'start':
            return None
        behaviour = self.human.start_episode()
        self.success_pressed = False
        return f'episode {event.get("episode")}: {behaviour}'

    def on_joints(self, joints_rad, stamp_ns: int, now_ns: int) -> Optional[TeleopMessages]:
        self.joints, self.joints_stamp_ns = joints_rad, stamp_ns
        return self._answer(now_ns)

    def on_cube(self, cube_xyz_m, stamp_ns: int, now_ns: int) -> Optional[TeleopMessages]:
        self.cube, self.cube_stamp_ns = np.asarray(cube_xyz_m), stamp_ns
        return self._answer(now_ns)

    def on_policy(self, action, stamp_ns: Optional[int], now_ns: int
                  ) -> Optional[TeleopMessages]:
        self.policy_action, self.policy_stamp_ns = action, stamp_ns
        return self._answer(now_ns)

    def _answer(self, now_ns: int) -> Optional[TeleopMessages]:
        if self.policy_action is None or self.joints is None or self.cube is None:
            return None
        stamp_ns = self.policy_stamp_ns
        if stamp_ns is not None:  # lock-step: only with the state of the proposal's own tick
            if stamp_ns == self.answered_ns or self.joints_stamp_ns != stamp_ns or \
                    self.cube_stamp_ns != stamp_ns:
                return None
        else:
            stamp_ns = now_ns
        self.answered_ns = stamp_ns
        expert = self.expert.act(self.kin.fk(self.joints[:5]), self.joints[5], self.cube,
                                 self.grasped)
        out = self.human.output(expert, self.policy_action, 0.0)
        label = None
        if self.lifted and not self.success_pressed:
            label, self.success_pressed = LABEL_SUCCESS, True
        return TeleopMessages(label, out.action, out.intervention, stamp_ns)
