"""The simulated human (teleop device:=sim) drives the sim driver to a successful grasp."""
import time

import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray  # noqa: E402

from hilserl.base_node import qos_profile  # noqa: E402
from hilserl.conventions import Topics  # noqa: E402
from hilserl.conversions import action_source  # noqa: E402
from so101_driver.driver_node import DriverNode  # noqa: E402
from so101_driver.teleop_node import TeleopNode  # noqa: E402


def test_sim_interventions_fed_to_the_driver_complete_the_grasp(ros_context):
    driver = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim'), Parameter('seed', value=3)])
    # The human's actions go straight to the driver (in the full graph the actor relays them).
    teleop = TeleopNode(context=ros_context, cli_args=['--ros-args', '-r',
                                                       f'{Topics.HUMAN_ACTION}:={Topics.EE_ACTION}'],
                        parameter_overrides=[Parameter('device', value='sim')])
    probe = Node('probe', context=ros_context)
    seen = {'success': [], 'intervention': [], 'action': []}
    probe.create_subscription(Bool, Topics.SIM_SUCCESS, lambda m: seen['success'].append(m.data),
                              qos_profile(Topics.SIM_SUCCESS))
    probe.create_subscription(Bool, Topics.INTERVENTION,
                              lambda m: seen['intervention'].append(m.data),
                              qos_profile(Topics.INTERVENTION))
    probe.create_subscription(Float32MultiArray, Topics.EE_ACTION, seen['action'].append,
                              qos_profile(Topics.EE_ACTION))
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (driver, teleop, probe):
        executor.add_node(node)
    try:
        end = time.monotonic() + 30.0
        while time.monotonic() < end and not any(seen['success']):
            executor.spin_once(timeout_sec=0.01)
        assert any(seen['success']), 'the simulated human did not lift the cube'
        assert seen['intervention'] and all(seen['intervention'])  # no policy: human in control
        assert all(action_source(m) == 'human' for m in seen['action'])
        assert all(max(abs(v) for v in m.data) <= 1.0 for m in seen['action'])
    finally:
        executor.shutdown()
        driver.close()
        teleop.close()
        for node in (driver, teleop, probe):
            node.destroy_node()
