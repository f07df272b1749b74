"""Node tier: real messages between two nodes through the Kilted rmw in an isolated Context."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import Qos, Topics  # noqa: E402
from hilserl.messages.conversions import array_to_image, image_to_array  # noqa: E402


def spin_until(executor, predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_640x480_rgb8_image_survives_the_trip(ros_context):
    frame = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    sender = Node('image_sender', context=ros_context)
    receiver = Node('image_receiver', context=ros_context)
    received = []
    # Reliable here so the test cannot pass or fail by a dropped sample.
    receiver.create_subscription(Image, Topics.IMAGE_RAW, received.append, qos_profile(Qos.STATE))
    publisher = sender.create_publisher(Image, Topics.IMAGE_RAW, qos_profile(Qos.STATE))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sender)
    executor.add_node(receiver)
    try:
        assert spin_until(executor, lambda: publisher.get_subscription_count() > 0)
        publisher.publish(array_to_image(frame, 'rgb8', frame_id='gripper_cam_optical_frame'))
        assert spin_until(executor, lambda: len(received) > 0)
        msg = received[0]
        assert (msg.width, msg.height, msg.encoding) == (640, 480, 'rgb8')
        np.testing.assert_array_equal(image_to_array(msg), frame)
    finally:
        executor.shutdown()
        sender.destroy_node()
        receiver.destroy_node()


def test_qos_profiles_follow_the_conventions():
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    assert qos_profile(Topics.IMAGE_RAW).reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos_profile(Topics.IMAGE_CROP).reliability == ReliabilityPolicy.RELIABLE  # ticks
    assert qos_profile(Topics.TRANSITIONS).reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile(Topics.INTERVENTION).reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile(Topics.POLICY_WEIGHTS).durability == DurabilityPolicy.TRANSIENT_LOCAL
    with pytest.raises(KeyError, match='not a hilserl topic'):
        qos_profile('/absolute/thing')
