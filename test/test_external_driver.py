"""driver:=external, the seam for ros2_control users: so101_driver (backend external) keeps
end-effector control, workspace, slew limits, watchdog and resets, and commands the joints
through a forward position controller's topic. The stand-in below plays a ros2_control stack
with the message types and orders such a stack uses: joint_states from a
joint_state_broadcaster (its own joint order), std_msgs/Float64MultiArray commands in the
controller's `joints` order."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from hilserl.messages.conventions import JOINT_NAMES, Topics  # noqa: E402
from hilserl.robot.kinematics import SO101Kinematics  # noqa: E402
from hilserl.ros.node import qos_profile  # noqa: E402
from so101_driver.driver_node import DriverNode  # noqa: E402
from so101_driver.ee_control import TOP_DOWN_SEED_RAD  # noqa: E402
from conftest import spin_for  # noqa: E402

# The controller's `joints` parameter and the broadcaster's order: both differ from ours.
CONTROLLER_JOINTS = ['gripper', 'wrist_roll', 'shoulder_pan', 'shoulder_lift', 'elbow_flex',
                     'wrist_flex']
BROADCAST_JOINTS = list(reversed(JOINT_NAMES))
COMMAND_TOPIC = 'so101_arm_controller/commands'


class StandInJointStack(Node):
    """A forward position controller and a joint_state_broadcaster on servos that move at most
    2 rad/s toward the last command."""

    def __init__(self, context):
        super().__init__('stand_in_ros2_control', context=context)
        # away from home (about 0.5 s of reset motion), gripper closed
        start = dict(zip(JOINT_NAMES, np.append(TOP_DOWN_SEED_RAD + [0.3, -0.2, 0.2, 0, 0], 0)))
        self.q = {name: float(start[name]) for name in JOINT_NAMES}
        self.goal = dict(self.q)
        self.commands = 0
        self.broadcasting = True
        self.create_subscription(Float64MultiArray, COMMAND_TOPIC, self._on_command, 10)
        self.joint_pub = self.create_publisher(JointState, Topics.JOINT_STATES, 10)
        self.last_s = time.monotonic()
        self.create_timer(0.02, self._update)

    def _on_command(self, msg):
        assert len(msg.data) == len(CONTROLLER_JOINTS)
        self.goal = dict(zip(CONTROLLER_JOINTS, msg.data))
        self.commands += 1

    def _update(self):
        now = time.monotonic()
        step = 2.0 * min(now - self.last_s, 0.1)
        self.last_s = now
        for name in JOINT_NAMES:
            self.q[name] += float(np.clip(self.goal[name] - self.q[name], -step, step))
        if self.broadcasting:
            self.joint_pub.publish(JointState(name=BROADCAST_JOINTS,
                                              position=[self.q[n] for n in BROADCAST_JOINTS]))

    def tcp_m(self) -> np.ndarray:
        return SO101Kinematics().fk(np.array([self.q[n] for n in JOINT_NAMES[:5]]))[:3, 3]


@pytest.fixture
def seam(ros_context):
    stack = StandInJointStack(ros_context)
    driver = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='external'),
        Parameter('external_command_topic', value=COMMAND_TOPIC),
        Parameter('external_joint_order', value=CONTROLLER_JOINTS),
        Parameter('random_ee_reset', value=False),
        Parameter('publish_rate_hz', value=50.0),
        Parameter('health_period_s', value=0.2),
        # generous: a loaded machine may serve the stand-in's states late
        Parameter('external_state_timeout_s', value=2.0)])
    probe = Node('probe', context=ros_context)
    seen = {'tcp': [], 'ready': [], 'diag': []}
    probe.create_subscription(PoseStamped, Topics.TCP_POSE, seen['tcp'].append,
                              qos_profile(Topics.TCP_POSE))
    probe.create_subscription(Bool, Topics.DRIVER_READY, seen['ready'].append,
                              qos_profile(Topics.DRIVER_READY))
    probe.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS, seen['diag'].append,
                              qos_profile(Topics.DIAGNOSTICS))
    actions = probe.create_publisher(Float32MultiArray, Topics.EE_ACTION,
                                     qos_profile(Topics.EE_ACTION))
    reset = probe.create_client(Trigger, 'reset')
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (stack, driver, probe):
        executor.add_node(node)
    yield executor, stack, driver, probe, actions, reset, seen
    executor.shutdown()
    driver.close()
    for node in (driver, stack, probe):
        node.destroy_node()


def arm_counter(seen, key):
    for msg in reversed(seen['diag']):
        for status in msg.status:
            if status.name == 'so101_driver: arm':
                return int({kv.key: kv.value for kv in status.values}.get(key, 0))
    return None


def test_the_driver_moves_a_ros2_control_stack_in_cartesian_steps(seam):
    executor, stack, driver, probe, actions, reset, seen = seam
    assert spin_for(executor, 30.0, lambda: seen['ready'] and seen['ready'][-1].data and
                    len(seen['tcp']) > 3 and actions.get_subscription_count() > 0)
    # joint_states are the stack's alone: the driver publishes none beside it
    publishers = probe.get_publishers_info_by_topic('/' + Topics.JOINT_STATES)
    assert [p.node_name for p in publishers] == ['stand_in_ros2_control']
    # the TCP it reports is the FK of the stack's joints, whatever their broadcast order
    reported = seen['tcp'][-1].pose.position
    assert np.allclose([reported.x, reported.y, reported.z], stack.tcp_m(), atol=0.01)

    # reset: home, top-down at reset_tcp_xyz_m, through the controller's command topic
    before = len(seen['ready'])
    future = reset.call_async(Trigger.Request())
    assert spin_for(executor, 30.0, future.done) and future.result().success
    home = np.array([0.25, 0.0, 0.07])
    # done when the driver, busy while going home, says it is ready again
    assert spin_for(executor, 60.0, lambda: np.linalg.norm(stack.tcp_m() - home) < 0.01 and
                    any(not m.data for m in seen['ready'][before:]) and
                    seen['ready'][-1].data), stack.tcp_m()
    # reset_gripper_rad, at the gripper's index of the controller's order
    assert spin_for(executor, 10.0, lambda: abs(stack.goal['gripper'] - 0.7) < 1e-6)

    # three -x steps of 2 cm: the TCP goes 4.5-7 cm along -x (the bounds of the driver's own
    # test on the sim and Feetech backends), nowhere else
    # Each step is sent once the arm has made it and stopped: sent while the stack still lags
    # its goal, a step starts from a TCP short of it, and a loaded machine then measured 4.3 cm.
    start = np.array(stack.tcp_m())
    for i in range(3):
        actions.publish(Float32MultiArray(data=[-1.0, 0.0, 0.0, 0.0]))
        spin_for(executor, 10.0, lambda: start[0] - stack.tcp_m()[0] > 0.015 * (i + 1))
        wait_until_still(executor, stack)
    spin_for(executor, 30.0, lambda: start[0] - stack.tcp_m()[0] > 0.045)
    moved = stack.tcp_m() - start
    assert -0.07 < moved[0] < -0.045 and np.all(np.abs(moved[1:]) < 0.01), moved


def wait_until_still(executor, stack, still_s: float = 0.5, timeout_s: float = 10.0) -> None:
    """Spin until the stack's TCP has not moved 0.5 mm for `still_s` (at most `timeout_s`)."""
    last = {'tcp': np.array(stack.tcp_m()), 'since': time.monotonic()}

    def still() -> bool:
        tcp = np.array(stack.tcp_m())
        if np.linalg.norm(tcp - last['tcp']) > 5e-4:
            last.update(tcp=tcp, since=time.monotonic())
            return False
        return time.monotonic() - last['since'] > still_s
    spin_for(executor, timeout_s, still)


def test_stale_or_malformed_joint_states_hold_the_arm_and_are_counted(seam):
    executor, stack, driver, probe, actions, reset, seen = seam
    assert spin_for(executor, 30.0, lambda: seen['ready'] and seen['ready'][-1].data)
    bad = probe.create_publisher(JointState, Topics.JOINT_STATES, 10)
    spin_for(executor, 30.0, lambda: bad.get_subscription_count() > 0)
    bad.publish(JointState(name=['shoulder_pan'], position=[0.0]))  # five joints missing
    assert spin_for(executor, 30.0, lambda: (arm_counter(seen, 'bad_joint_states') or 0) >= 1)

    stack.broadcasting = False  # the stack stops answering: no fresh state, no new goal
    assert spin_for(executor, 30.0, lambda: not seen['ready'][-1].data)
    assert spin_for(executor, 30.0, lambda: (arm_counter(seen, 'read_failures') or 0) > 0)
    commands = stack.commands
    actions.publish(Float32MultiArray(data=[-1.0, 0.0, 0.0, 0.0]))
    spin_for(executor, 1.0)
    assert stack.commands == commands  # nothing is sent on a stale state
    stack.broadcasting = True
    assert spin_for(executor, 30.0, lambda: seen['ready'][-1].data)
