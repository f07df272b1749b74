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

from hilserl.base_node import qos_profile  # noqa: E402
from hilserl.conventions import Topics  # noqa: E402
from hilserl.conversions import action_to_msg, joy_to_human, stamp_to_nanoseconds  # noqa: E402
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
