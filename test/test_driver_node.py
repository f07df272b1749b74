"""so101_driver node, sim and hardware (pty bus) backends, with identical topic semantics."""

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import JOINT_NAMES, Topics  # noqa: E402
from so101_driver.calibration import default_calibration, rad_to_ticks, save_calibration  # noqa
from so101_driver.driver_node import DriverNode  # noqa: E402
from so101_driver.ee_control import TOP_DOWN_SEED_RAD  # noqa: E402
from so101_driver.sts_simulator import SimulatedBus  # noqa: E402
from conftest import spin_for  # noqa: E402


@pytest.fixture(params=['sim', 'hardware'])
def graph(request, ros_context, tmp_path):
    overrides = [Parameter('backend', value=request.param),
                 Parameter('random_ee_reset', value=False),
                 Parameter('command_timeout_s', value=0.3),
                 Parameter('health_period_s', value=0.2),
                 Parameter('sim_clock', value=False)]  # wall-clock ticks: test_sim_clock.py
    sim_bus = None
    if request.param == 'hardware':
        cal = default_calibration()
        home = np.append(TOP_DOWN_SEED_RAD, 0.7)
        start = {cal[n].id: rad_to_ticks(n, home[k], cal[n]) for k, n in enumerate(JOINT_NAMES)}
        sim_bus = SimulatedBus(positions=start, calibration=cal)  # EEPROM matches cal
        save_calibration(cal, tmp_path / 'cal.json')
        overrides += [Parameter('port', value=sim_bus.port),
                      Parameter('bus_timeout_ms', value=300.0),  # the simulator shares the CPUs
                      Parameter('calibration_file', value=str(tmp_path / 'cal.json'))]
    driver = DriverNode(context=ros_context, parameter_overrides=overrides)
    probe = Node('probe', context=ros_context)
    seen = {'joints': [], 'tcp': [], 'diag': []}
    probe.create_subscription(JointState, Topics.JOINT_STATES, seen['joints'].append,
                              qos_profile(Topics.JOINT_STATES))
    probe.create_subscription(PoseStamped, Topics.TCP_POSE, seen['tcp'].append,
                              qos_profile(Topics.TCP_POSE))
    probe.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS, seen['diag'].append,
                              qos_profile(Topics.DIAGNOSTICS))
    actions = probe.create_publisher(Float32MultiArray, Topics.EE_ACTION,
                                     qos_profile(Topics.EE_ACTION))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(driver)
    executor.add_node(probe)
    yield executor, driver, probe, actions, seen
    executor.shutdown()
    driver.close()
    driver.destroy_node()
    probe.destroy_node()
    if sim_bus is not None:
        sim_bus.close()


def last_counter(seen, key):
    for msg in reversed(seen['diag']):
        for status in msg.status:
            if status.name == 'so101_driver: arm':
                return int({kv.key: kv.value for kv in status.values}[key])
    return None


def test_ee_actions_move_the_tcp_and_bad_ones_are_counted(graph):
    executor, driver, probe, actions, seen = graph
    assert spin_for(executor, 5.0, lambda: len(seen['tcp']) > 5 and
                    actions.get_subscription_count() > 0)
    msg = seen['joints'][-1]
    assert list(msg.name) == list(JOINT_NAMES) and len(msg.velocity) == len(msg.effort) == 6
    x0 = seen['tcp'][-1].pose.position.x
    assert seen['tcp'][-1].header.frame_id == 'base_link'
    for i in range(3):  # -x: from home, +z leaves the top-down reach within a step
        actions.publish(Float32MultiArray(data=[-1.0, 0.0, 0.0, 0.0]))
        # a 10 Hz controller's pace, but on a loaded machine wait for the step to be made
        spin_for(executor, 10.0, lambda: x0 - seen['tcp'][-1].pose.position.x > 0.015 * (i + 1))
    spin_for(executor, 0.3)
    # the arm slews to the last goal at its own pace: wait for it to arrive, however slow
    spin_for(executor, 10.0, lambda: x0 - seen['tcp'][-1].pose.position.x > 0.045)
    x1 = seen['tcp'][-1].pose.position.x
    assert 0.045 < x0 - x1 < 0.07, (x0, x1)
    actions.publish(Float32MultiArray(data=[0.0, float('nan'), 0.0, 0.0]))
    actions.publish(Float32MultiArray(data=[0.0, 0.0]))
    assert spin_for(executor, 2.0, lambda: last_counter(seen, 'rejected_commands') == 2)


def test_estop_service_refuses_motion(graph):
    executor, driver, probe, actions, seen = graph
    client = probe.create_client(SetBool, 'estop')
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(SetBool.Request(data=True))
    assert spin_for(executor, 3.0, future.done) and future.result().success
    spin_for(executor, 0.3)
    z0 = seen['tcp'][-1].pose.position.z
    for i in range(3):
        actions.publish(Float32MultiArray(data=[0.0, 0.0, 1.0, 0.0]))
        # a 10 Hz controller's pace, but on a loaded machine wait for the step to be made
        spin_for(executor, 1.0, lambda: seen['tcp'][-1].pose.position.z - z0 > 0.015 * (i + 1))
    spin_for(executor, 0.3)
    assert abs(seen['tcp'][-1].pose.position.z - z0) < 0.003
    assert last_counter(seen, 'rejected_commands') >= 1
