"""The simulated human (teleop device:=sim) answers each stamped policy proposal once, for that
tick, and its actions relayed to the sim driver on the simulated clock complete the grasp."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Joy  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402
from hilserl.messages.conversions import (  # noqa: E402
    action_to_msg, joy_to_human, stamp_to_nanoseconds)
from so101_driver.driver_node import DriverNode  # noqa: E402
from so101_driver.teleop_node import TeleopNode  # noqa: E402


def test_sim_human_answers_each_tick_once_and_completes_the_grasp(ros_context):
    driver = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim'), Parameter('seed', value=3),
        Parameter('action_timeout_s', value=600.0)])
    teleop = TeleopNode(context=ros_context, parameter_overrides=[
        Parameter('device', value='sim')])
    probe = Node('probe', context=ros_context)   # stands in for the actor
    proposals = probe.create_publisher(Float32MultiArray, Topics.POLICY_ACTION,
                                       qos_profile(Topics.POLICY_ACTION))
    actions = probe.create_publisher(Float32MultiArray, Topics.EE_ACTION,
                                     qos_profile(Topics.EE_ACTION))
    seen = {'success': [], 'answers': [], 'proposed': []}

    def on_tick(msg):  # propose "do nothing" for every tick: the human will take over
        stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
        seen['proposed'].append(stamp_ns)
        proposals.publish(action_to_msg(np.zeros(4), 'policy', stamp_ns=stamp_ns))

    def on_human(msg):
        action, intervention, stamp_ns = joy_to_human(msg, 4)
        seen['answers'].append((stamp_ns, intervention))
        actions.publish(action_to_msg(action, 'human', stamp_ns=stamp_ns))

    probe.create_subscription(PoseStamped, Topics.SIM_CUBE_POSE, on_tick,
                              qos_profile(Topics.SIM_CUBE_POSE))
    probe.create_subscription(Joy, Topics.HUMAN_ACTION, on_human,
                              qos_profile(Topics.HUMAN_ACTION))
    probe.create_subscription(Bool, Topics.SIM_SUCCESS, lambda m: seen['success'].append(m.data),
                              qos_profile(Topics.SIM_SUCCESS))
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (driver, teleop, probe):
        executor.add_node(node)
    try:
        end = time.monotonic() + 120.0
        while time.monotonic() < end and not any(seen['success']):
            if not seen['proposed']:  # the start-up tick may precede the probe's discovery
                actions.publish(action_to_msg(np.zeros(4), 'policy'))
            executor.spin_once(timeout_sec=0.05)
        assert any(seen['success']), 'the simulated human did not lift the cube'
        stamps = [s for s, _ in seen['answers']]
        assert len(stamps) == len(set(stamps)), 'a tick was answered twice'
        assert set(stamps) <= set(seen['proposed'])  # each answer is for a proposed tick
        assert len(stamps) <= 100 and any(i for _, i in seen['answers'])
    finally:
        executor.shutdown()
        driver.close()
        teleop.close()
        for node in (driver, teleop, probe):
            node.destroy_node()


class VirtualGamepad:
    """A gamepad plugged in, as SDL itself simulates one (SDL_JoystickAttachVirtual in the SDL
    that pygame loaded): the node reads it through pygame exactly as a USB pad. Sticks rest at
    0 (SDL's triggers would rest at -1, which the node's layout does not read)."""

    AXES, BUTTONS = 6, 12

    def __init__(self):
        import ctypes
        import glob
        import os
        os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
        import pygame
        pygame.display.init()
        pygame.joystick.init()
        libs = glob.glob(os.path.join(os.path.dirname(pygame.__file__), '..', 'pygame.libs',
                                      'libSDL2-2*'))
        if not libs:
            pytest.skip('pygame without its bundled SDL2: cannot attach a virtual gamepad')
        self._ctypes = ctypes
        self.sdl = ctypes.CDLL(libs[0])
        self.sdl.SDL_JoystickOpen.restype = ctypes.c_void_p
        index = self.sdl.SDL_JoystickAttachVirtual(0, self.AXES, self.BUTTONS, 0)
        assert index >= 0, 'SDL refused a virtual joystick'
        self.index = index
        self.handle = ctypes.c_void_p(self.sdl.SDL_JoystickOpen(index))
        for axis in range(self.AXES):
            self.axis(axis, 0.0)

    def axis(self, axis: int, value: float) -> None:
        value = max(-1.0, min(1.0, value))  # SDL's range is -32768..32767
        raw = int(round(value * (32768 if value < 0 else 32767)))
        assert self.sdl.SDL_JoystickSetVirtualAxis(self.handle, axis,
                                                   self._ctypes.c_int16(raw)) == 0

    def button(self, button: int, pressed: bool) -> None:
        assert self.sdl.SDL_JoystickSetVirtualButton(self.handle, button,
                                                     self._ctypes.c_uint8(int(pressed))) == 0

    def unplug(self) -> None:
        self.sdl.SDL_JoystickClose(self.handle)
        self.sdl.SDL_JoystickDetachVirtual(self.index)


def test_gamepad_sticks_and_buttons_become_teleop_topics(ros_context):
    """teleop device:=gamepad with a (virtual) pad: the left stick forward drives +x while the
    intervention button is held, the shoulder button closes the gripper, B labels a success."""
    from std_msgs.msg import String

    from hilserl.robot.teleop import GamepadLayout
    pytest.importorskip('pygame')
    layout, pad = GamepadLayout(), VirtualGamepad()
    teleop = TeleopNode(context=ros_context, parameter_overrides=[
        Parameter('device', value='gamepad')])
    probe = Node('probe', context=ros_context)
    seen = {'actions': [], 'labels': []}
    probe.create_subscription(Joy, Topics.HUMAN_ACTION,
                              lambda m: seen['actions'].append(joy_to_human(m, 4)[:2]),
                              qos_profile(Topics.HUMAN_ACTION))
    probe.create_subscription(String, Topics.EPISODE_LABEL,
                              lambda m: seen['labels'].append(m.data),
                              qos_profile(Topics.EPISODE_LABEL))
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (teleop, probe):
        executor.add_node(node)

    def spin_until(condition, timeout_s=60.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not condition():
            executor.spin_once(timeout_sec=0.05)
        return condition()

    try:
        assert spin_until(lambda: seen['actions']), 'no teleop/action from the gamepad node'
        action, intervention = seen['actions'][-1]
        assert not intervention and not action.any()  # a pad at rest
        pad.axis(layout.axis_x, -1.0)        # left stick pushed forward (SDL: up is -1)
        pad.button(layout.button_intervene, True)
        pad.button(layout.button_close, True)
        assert spin_until(lambda: seen['actions'][-1][1]), 'holding A did not take over'
        assert spin_until(lambda: seen['actions'][-1][0][0] > 0.99), seen['actions'][-1]
        action, _ = seen['actions'][-1]
        assert action[1:].tolist() == [0.0, 0.0, -1.0], action   # forward, gripper closing
        pad.button(layout.button_success, True)
        assert spin_until(lambda: seen['labels']), 'B gave no label'
        assert seen['labels'] == ['success']
        pad.button(layout.button_success, False)
        pad.button(layout.button_intervene, False)
        assert spin_until(lambda: not seen['actions'][-1][1])  # released: the policy drives
        assert seen['labels'] == ['success']                   # one press, one label
    finally:
        executor.shutdown()
        teleop.close()
        pad.unplug()
        for node in (teleop, probe):
            node.destroy_node()
