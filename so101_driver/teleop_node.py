"""teleop node: a human device (keyboard, gamepad, leader arm) or the simulated human.

Publishes teleop/action (sensor_msgs/Joy: axes [dx, dy, dz, gripper] in [-1, 1], buttons
[intervention], stamped), intervention (Bool) and teleop/episode_label (String: success |
failure | rerecord). Devices publish at the control rate, stamped with the node's clock. The
simulated human answers each stamped policy proposal (policy/action) once, with the action for
that very tick, computed from that tick's state; it restarts its patience and behaviour at each
episode start (episode/events) and presses "success" when it sees the cube lifted.
Key bindings: see hilserl/robot/teleop.py and the README.

`keyboard_teleop` (keyboard_main) is the keyboard device in a terminal of its own, as
teleop_twist_keyboard: nodes started by `ros2 launch` have no stdin, so there the graph leaves
the keyboard to it (`ros2 run hilserl keyboard_teleop`). It publishes the same topics.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

import numpy as np

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, Float32MultiArray, String
from std_srvs.srv import SetBool

from hilserl.ros.node import declare, qos_profile, spin_node
from hilserl.configuration.config import ActionConfig, TaskConfig
from hilserl.messages.conventions import JOINT_NAMES, Topics
from hilserl.messages.conversions import (ConversionError, action_from_msg, action_stamp_ns,
                                          human_to_joy, joint_state_to_arrays, stamp_to_nanoseconds)
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.ros.graph import keyboard_teleop_command
from hilserl.robot.teleop import KEY_HELP, SimHumanConfig, SimHumanTeleop
from so101_driver.teleop_core import (DEVICES, DeviceTeleop, SimHumanAnswers, TeleopConfig,
                                      TeleopMessages)


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
    def __init__(self, node_name: str = 'teleop', **kwargs):
        super().__init__(node_name, **kwargs)
        self.device = declare(self, 'device', 'sim', f'one of {DEVICES}', read_only=True)
        labels_only = declare(self, 'labels_only', False, 'keyboard: publish only the '
                              'episode labels (the keys beside a leader arm started by '
                              'ros2 launch)', read_only=True)
        # the task's values default to the training config's dataclasses (no copies)
        rate_hz = declare(self, 'control_rate_hz', TaskConfig().control_rate_hz,
                          'publish rate (Hz)', float_range=(1.0, 100.0), read_only=True)
        ee_step_m = declare(self, 'ee_step_m', list(ActionConfig().ee_step_m),
                            'metres per action unit (leader arm scaling)', read_only=True)
        self.config = TeleopConfig(self.device, labels_only)
        self.kin = SO101Kinematics()
        self.keys = None
        self.devices = DeviceTeleop(self.config, self.kin, ee_step_m)
        if self.config.reads_terminal_keys:
            if sys.stdin.isatty():
                self.keys = TerminalKeys()
                self.get_logger().info(f'keys: {KEY_HELP}')
            else:
                self.get_logger().warning(
                    f'stdin is not a terminal: keyboard keys are off; run '
                    f'`{keyboard_teleop_command(self.get_namespace(), self.device)}` in a '
                    f'terminal of its own')
        if self.device == 'gamepad':
            os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
            import pygame
            # Only what a gamepad needs (events, joysticks): pygame.init() would also open the
            # audio device, which fails noisily on a headless machine.
            pygame.display.init()
            pygame.joystick.init()
            if pygame.joystick.get_count() == 0:
                raise RuntimeError('device=gamepad: no joystick found')
            self._pygame = pygame
            self.joystick = pygame.joystick.Joystick(0)
        if self.device == 'leader':
            self._start_leader(declare(self, 'leader_port', '/dev/ttyACM1',
                                       'serial port of the leader arm', read_only=True),
                               declare(self, 'leader_calibration_file', '',
                                       'LeRobot calibration JSON of the leader arm',
                                       read_only=True),
                               declare(self, 'leader_bus_timeout_ms', 0.0,
                                       'floor of a leader bus read timeout (ms); 0 = the '
                                       'SDK\'s own, from the packet length (raise it for a slow '
                                       'USB adapter)', float_range=(0.0, 1000.0),
                                       read_only=True))
        if self.device == 'sim':
            self.sim_human = SimHumanAnswers(SimHumanTeleop(SimHumanConfig(
                direction_tolerance_deg=declare(
                    self, 'direction_tolerance_deg', 90.0, 'take over after a few steps whose '
                    'motion points further than this from the expert\'s (or that drive the '
                    'gripper the opposite way)', float_range=(0.0, 180.0), read_only=True),
                min_intervention_steps=declare(self, 'min_intervention_steps', 8,
                                               'steps kept once in control',
                                               int_range=(1, 1000), read_only=True),
                behaviour_mix=declare(self, 'behaviour_mix', 'expert:1',
                                      'per-episode behaviour weights, e.g. '
                                      'expert:0.6,noisy:0.3,random:0.1', read_only=True)),
                seed=declare(self, 'seed', 0, 'random seed of the behaviours',
                             int_range=(0, 2**31 - 1), read_only=True)), self.kin)
            # Ground truth first: in a batch of ready messages, rclpy serves subscriptions in
            # creation order, so a tick's grasp flag is in hand when its poses arrive.
            self.create_subscription(Bool, Topics.SIM_GRASPED, self._on_grasped,
                                     qos_profile(Topics.SIM_GRASPED))
            self.create_subscription(Bool, Topics.SIM_SUCCESS, self._on_lifted,
                                     qos_profile(Topics.SIM_SUCCESS))
            self.create_subscription(String, Topics.EPISODE_EVENTS, self._on_event,
                                     qos_profile(Topics.EPISODE_EVENTS))
            self.create_subscription(JointState, Topics.JOINT_STATES, self._on_joints,
                                     qos_profile(Topics.JOINT_STATES))
            self.create_subscription(PoseStamped, Topics.SIM_CUBE_POSE, self._on_cube,
                                     qos_profile(Topics.SIM_CUBE_POSE))
            self.create_subscription(Float32MultiArray, Topics.POLICY_ACTION, self._on_policy,
                                     qos_profile(Topics.POLICY_ACTION))
        self.action_pub = self.create_publisher(Joy, Topics.HUMAN_ACTION,
                                                qos_profile(Topics.HUMAN_ACTION))
        self.intervention_pub = self.create_publisher(Bool, Topics.INTERVENTION,
                                                      qos_profile(Topics.INTERVENTION))
        self.label_pub = self.create_publisher(String, Topics.EPISODE_LABEL,
                                               qos_profile(Topics.EPISODE_LABEL))
        # the t key: the driver's torque service, as `hilserl torque on` calls it
        self.torque_client = self.create_client(SetBool, 'torque')
        if self.config.publishes_at_control_rate:
            self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(f'teleop up: device={self.device}, {rate_hz:g} Hz')

    def _start_leader(self, port, calibration_file, timeout_ms):
        from so101_driver.calibration import load_calibration
        from so101_driver.feetech_bus import FeetechBus
        from so101_driver.hardware_backend import HardwareBackend
        if not calibration_file:
            raise ValueError('device=leader needs leader_calibration_file')
        self.leader_bus = FeetechBus(port, timeout_ms=timeout_ms or None)
        self.leader_bus.open()
        self.leader = HardwareBackend(self.leader_bus, load_calibration(calibration_file))
        self.leader.set_torque(False)  # the leader is moved by hand

    # --- sim inputs -------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_joints(self, msg):
        try:
            joints, _, _ = joint_state_to_arrays(msg, JOINT_NAMES)
        except ConversionError:
            return
        self._publish(self.sim_human.on_joints(joints, stamp_to_nanoseconds(msg.header.stamp),
                                               self._now_ns()))

    def _on_cube(self, msg):
        p = msg.pose.position
        if not np.all(np.isfinite([p.x, p.y, p.z])):
            self.get_logger().warning(f'ignoring cube pose: non-finite position '
                                      f'{[p.x, p.y, p.z]}', throttle_duration_sec=5.0)
            return
        self._publish(self.sim_human.on_cube(np.array([p.x, p.y, p.z]),
                                             stamp_to_nanoseconds(msg.header.stamp),
                                             self._now_ns()))

    def _on_grasped(self, msg):
        self.sim_human.on_grasped(msg.data)

    def _on_lifted(self, msg):
        self.sim_human.on_lifted(msg.data)

    def _on_event(self, msg):
        started = self.sim_human.on_event(msg.data)
        if started:
            self.get_logger().debug(started)

    def _on_policy(self, msg):
        try:
            action, stamp_ns = action_from_msg(msg, 4), action_stamp_ns(msg)
        except ConversionError as exc:
            self.get_logger().warning(f'ignoring policy action: {exc}', throttle_duration_sec=5.0)
            return
        self._publish(self.sim_human.on_policy(action, stamp_ns, self._now_ns()))

    # --- output -----------------------------------------------------------------------------
    def _publish(self, out: Optional[TeleopMessages]) -> None:
        if out is None:
            return
        if out.torque_on:
            self._ask_torque_on()
        if out.label:  # before the action: the actor reads the label with the tick's action
            self.label_pub.publish(String(data=out.label))
        if out.action is None:
            return
        stamp_ns = out.stamp_ns if out.stamp_ns is not None else self._now_ns()
        try:
            joy = human_to_joy(out.action, out.intervention, stamp_ns)
        except ConversionError as exc:  # what it was told of the world was not (a stranger's)
            self.get_logger().warning(f'no human action for this tick: {exc}',
                                      throttle_duration_sec=5.0)
            return
        self.intervention_pub.publish(Bool(data=bool(out.intervention)))
        self.action_pub.publish(joy)

    def _tick(self):
        now = time.monotonic()
        if self.keys is not None:
            self.devices.feed_keys(self.keys.read(), now)
        if self.device == 'keyboard':
            out = self.devices.keyboard_step(now)
        elif self.device == 'gamepad':
            self._pygame.event.pump()
            out = self.devices.gamepad_step(
                [self.joystick.get_axis(i) for i in range(self.joystick.get_numaxes())],
                [self.joystick.get_button(i) for i in range(self.joystick.get_numbuttons())])
        else:  # the leader arm
            try:
                out = self.devices.leader_step(now, lambda: self.leader.read().position)
            except Exception as exc:  # noqa: BLE001 - a lost leader must not end teleop
                self.get_logger().error(f'leader arm read failed: {exc}',
                                        throttle_duration_sec=2.0)
                return
        self._publish(out)

    def _ask_torque_on(self) -> None:
        if not self.torque_client.service_is_ready():
            self.get_logger().warning('t: the driver\'s torque service is not up; nothing done')
            return
        self.get_logger().info('t: asking the driver for torque on')
        future = self.torque_client.call_async(SetBool.Request(data=True))

        def answered(done):
            response = done.result()
            if response is None:
                self.get_logger().error('t: the torque request failed')
            elif response.success:
                self.get_logger().info(f't: {response.message}')
            else:  # a servo still hot is named; the lock-out goes on
                self.get_logger().warning(f't: refused: {response.message}')
        future.add_done_callback(answered)

    def close(self):
        if self.keys is not None:
            self.keys.close()
        if self.device == 'leader':
            self.leader_bus.close()


def main(args=None):
    return spin_node(TeleopNode, args=args)


def keyboard_main(args=None):
    """`keyboard_teleop`: the keyboard in this terminal, publishing the teleop topics."""
    if not sys.stdin.isatty():
        print('keyboard_teleop: stdin is not a terminal; run it in a terminal of its own',
              file=sys.stderr)
        return 2
    return spin_node(lambda: TeleopNode(node_name='keyboard_teleop', parameter_overrides=[
        Parameter('device', value='keyboard')]), args=args)


if __name__ == '__main__':
    sys.exit(main())
