"""teleop node: a human device (keyboard, gamepad, leader arm) or the simulated human.

Publishes teleop/action (Float32MultiArray in [-1, 1], source label 'human'), intervention (Bool)
at the control rate, and teleop/episode_label (String: success | failure | rerecord).
Key bindings: see hilserl/teleop.py and the README.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float32MultiArray, String

from hilserl.base_node import declare, qos_profile, spin_node
from hilserl.conventions import JOINT_NAMES, ActionSource, Topics
from hilserl.conversions import (ConversionError, action_from_msg, action_to_msg,
                                 joint_state_to_arrays)
from hilserl.expert import ScriptedExpert
from hilserl.kinematics import SO101Kinematics
from hilserl.teleop import (GamepadTeleop, KeyboardTeleop, LeaderArmTeleop, SimHumanConfig,
                            SimHumanTeleop, parse_terminal_keys)

DEVICES = ('keyboard', 'gamepad', 'leader', 'sim', 'none')


class TerminalKeys:
    """Non-blocking raw reads from the controlling terminal (works over SSH, no display)."""

    def __init__(self):
        import termios
        import tty
        self._termios = termios
        self.fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self) -> str:
        import select
        chunks = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64)
            if not data:
                break
            chunks.append(data.decode(errors='ignore'))
        return ''.join(chunks)

    def close(self):
        self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self._saved)


class TeleopNode(Node):
    def __init__(self, **kwargs):
        super().__init__('teleop', **kwargs)
        self.device = declare(self, 'device', 'sim', f'one of {DEVICES}', read_only=True)
        rate_hz = declare(self, 'control_rate_hz', 10.0, 'publish rate (Hz)',
                          float_range=(1.0, 100.0), read_only=True)
        ee_step_m = declare(self, 'ee_step_m', [0.02, 0.02, 0.02],
                            'metres per action unit (leader arm scaling)', read_only=True)
        self.kin = SO101Kinematics()
        self.keys = None
        self.keyboard = KeyboardTeleop()
        if self.device not in DEVICES:
            raise ValueError(f'device={self.device!r}: must be one of {DEVICES}')
        if self.device in ('keyboard', 'leader'):
            if sys.stdin.isatty():
                self.keys = TerminalKeys()
            else:
                self.get_logger().warning('stdin is not a terminal: keyboard keys are off (run '
                                          'teleop in its own terminal for keys)')
        if self.device == 'gamepad':
            os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
            import pygame
            pygame.init()
            pygame.joystick.init()
            if pygame.joystick.get_count() == 0:
                raise RuntimeError('device=gamepad: no joystick found')
            self._pygame = pygame
            self.joystick = pygame.joystick.Joystick(0)
            self.gamepad = GamepadTeleop()
        if self.device == 'leader':
            self._start_leader(declare(self, 'leader_port', '/dev/ttyACM1',
                                       'serial port of the leader arm', read_only=True),
                               declare(self, 'leader_calibration_file', '',
                                       'LeRobot calibration JSON of the leader arm',
                                       read_only=True), ee_step_m)
        if self.device == 'sim':
            self.expert = ScriptedExpert()
            self.sim_human = SimHumanTeleop(SimHumanConfig(
                deviation_threshold=declare(self, 'deviation_threshold', 0.6,
                                            'take over when |policy - expert| exceeds this',
                                            float_range=(0.0, 2.0), read_only=True),
                min_intervention_steps=declare(self, 'min_intervention_steps', 15,
                                               'steps kept once in control',
                                               int_range=(1, 1000), read_only=True)))
            self.joints = self.cube = None
            self.grasped = False
            self.policy_action = np.zeros(4)
            self.policy_stamp = None
            self.create_subscription(JointState, Topics.JOINT_STATES, self._on_joints,
                                     qos_profile(Topics.JOINT_STATES))
            self.create_subscription(PoseStamped, Topics.SIM_CUBE_POSE, self._on_cube,
                                     qos_profile(Topics.SIM_CUBE_POSE))
            self.create_subscription(Bool, Topics.SIM_GRASPED, self._on_grasped,
                                     qos_profile(Topics.SIM_GRASPED))
            self.create_subscription(Float32MultiArray, Topics.POLICY_ACTION, self._on_policy,
                                     qos_profile(Topics.POLICY_ACTION))
        self.action_pub = self.create_publisher(Float32MultiArray, Topics.HUMAN_ACTION,
                                                qos_profile(Topics.HUMAN_ACTION))
        self.intervention_pub = self.create_publisher(Bool, Topics.INTERVENTION,
                                                      qos_profile(Topics.INTERVENTION))
        self.label_pub = self.create_publisher(String, Topics.EPISODE_LABEL,
                                               qos_profile(Topics.EPISODE_LABEL))
        self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(f'teleop up: device={self.device}, {rate_hz:g} Hz')

    def _start_leader(self, port, calibration_file, ee_step_m):
        from so101_driver.calibration import load_calibration
        from so101_driver.feetech_bus import FeetechBus
        from so101_driver.hardware_backend import HardwareBackend
        if not calibration_file:
            raise ValueError('device=leader needs leader_calibration_file')
        self.leader_bus = FeetechBus(port)
        self.leader_bus.open()
        self.leader = HardwareBackend(self.leader_bus, load_calibration(calibration_file))
        self.leader.set_torque(False)  # the leader is moved by hand
        self.leader_teleop = LeaderArmTeleop(self.kin, ee_step_m)

    # --- sim inputs -------------------------------------------------------------------------
    def _on_joints(self, msg):
        try:
            self.joints, _, _ = joint_state_to_arrays(msg, JOINT_NAMES)
        except ConversionError:
            pass

    def _on_cube(self, msg):
        p = msg.pose.position
        self.cube = np.array([p.x, p.y, p.z])

    def _on_grasped(self, msg):
        self.grasped = bool(msg.data)

    def _on_policy(self, msg):
        try:
            self.policy_action = action_from_msg(msg, 4)
            self.policy_stamp = time.monotonic()
        except ConversionError:
            pass

    # --- output -----------------------------------------------------------------------------
    def _tick(self):
        now = time.monotonic()
        if self.keys is not None:
            for key in parse_terminal_keys(self.keys.read()):
                self.keyboard.feed(key, now)
        if self.device == 'keyboard':
            out = self.keyboard.output(now)
        elif self.device == 'gamepad':
            self._pygame.event.pump()
            out = self.gamepad.output(
                [self.joystick.get_axis(i) for i in range(self.joystick.get_numaxes())],
                [self.joystick.get_button(i) for i in range(self.joystick.get_numbuttons())])
        elif self.device == 'leader':
            keys = self.keyboard.output(now)
            try:
                out = self.leader_teleop.output(self.leader.read().position, keys.intervention)
            except Exception as exc:  # noqa: BLE001 - a lost leader must not end teleop
                self.get_logger().error(f'leader arm read failed: {exc}',
                                        throttle_duration_sec=2.0)
                return
            if keys.label:
                self.label_pub.publish(String(data=keys.label))
        elif self.device == 'sim':
            if self.joints is None or self.cube is None:
                return
            expert = self.expert.act(self.kin.fk(self.joints[:5]), self.joints[5], self.cube,
                                     self.grasped)
            age = None if self.policy_stamp is None else now - self.policy_stamp
            out = self.sim_human.output(expert, self.policy_action, age)
        else:
            return
        self.action_pub.publish(action_to_msg(out.action, ActionSource.HUMAN))
        self.intervention_pub.publish(Bool(data=bool(out.intervention)))
        if out.label:
            self.label_pub.publish(String(data=out.label))

    def close(self):
        if self.keys is not None:
            self.keys.close()
        if self.device == 'leader':
            self.leader_bus.close()


def main(args=None):
    return spin_node(TeleopNode, args=args)


if __name__ == '__main__':
    main()
