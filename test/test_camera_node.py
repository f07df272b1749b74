"""gripper_camera node: a real OpenCV capture of a video file with a blank burst and an end of
stream (the device disappears), and the MuJoCo camera driven by the sim driver's state."""

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402
from hilserl.messages.conversions import image_to_array  # noqa: E402
from hilserl.learning.image_ops import crop_resize  # noqa: E402
from so101_driver.camera_node import CameraNode  # noqa: E402
from conftest import spin_for  # noqa: E402


def write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 30, (640, 480))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def listen(node, seen):
    node.create_subscription(Image, Topics.IMAGE_RAW, seen['raw'].append,
                             qos_profile(Topics.IMAGE_RAW))
    node.create_subscription(Image, Topics.IMAGE_CROP, seen['crop'].append,
                             qos_profile(Topics.IMAGE_CROP))
    node.create_subscription(DiagnosticArray, Topics.DIAGNOSTICS, seen['diag'].append,
                             qos_profile(Topics.DIAGNOSTICS))


def counters(seen):
    for msg in reversed(seen['diag']):
        for status in msg.status:
            if status.name == 'gripper_camera':
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_blank_burst_and_lost_device_are_recovered_and_reported(ros_context, tmp_path):
    rng = np.random.default_rng(0)
    textured = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(15)]
    video = tmp_path / 'cam.avi'
    write_video(video, textured[:8] + [np.zeros((480, 640, 3), np.uint8)] * 5 + textured[8:])
    camera = CameraNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='opencv'), Parameter('device', value=str(video)),
        Parameter('fps', value=60.0), Parameter('max_backoff_s', value=0.5)])
    camera.supervisor._backoff_s = 0.05  # reopen quickly in the test
    probe = Node('probe', context=ros_context)
    seen = {'raw': [], 'crop': [], 'diag': []}
    listen(probe, seen)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(camera)
    executor.add_node(probe)
    try:
        assert spin_for(executor, 10.0, lambda: int(counters(seen).get('reopens', 0)) >= 1
                        and len(seen['raw']) > 30)
        stats = counters(seen)
        assert int(stats['blank_frames']) >= 4
        for msg in seen['raw']:
            assert image_to_array(msg)[::8, ::8].std() > 2.0, 'a blank frame was published'
        assert seen['crop'][-1].width == 128 and seen['crop'][-1].height == 128
    finally:
        executor.shutdown()
        camera.close()
        camera.destroy_node()
        probe.destroy_node()


def test_sim_camera_renders_each_tick_of_the_simulated_clock(ros_context):
    from sensor_msgs.msg import JointState

    from hilserl.messages.conversions import stamp_to_nanoseconds
    from so101_driver.driver_node import DriverNode
    # no actor: every tick times out and holds, so the simulated clock still advances
    driver = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim'), Parameter('action_timeout_s', value=0.05)])
    camera = CameraNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim'), Parameter('fps', value=15.0)])
    probe = Node('probe', context=ros_context)
    seen = {'raw': [], 'crop': [], 'diag': []}
    listen(probe, seen)
    joint_stamps = []
    probe.create_subscription(JointState, Topics.JOINT_STATES, lambda m: joint_stamps.append(
        stamp_to_nanoseconds(m.header.stamp)), qos_profile(Topics.JOINT_STATES))
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (driver, camera, probe):
        executor.add_node(node)
    try:
        assert spin_for(executor, 60.0, lambda: len(seen['crop']) >= 6)
        stamps = [stamp_to_nanoseconds(m.header.stamp) for m in seen['crop']]
        # one frame per 0.1 s control tick (15 fps >= 10 Hz), stamped with the tick it shows
        assert all(d == 100_000_000 for d in np.diff(stamps[1:])), stamps
        assert set(stamps[1:]) <= set(joint_stamps)
        raw, crop = seen['raw'][-1], seen['crop'][-1]
        assert (raw.width, raw.height, crop.width, crop.height) == (640, 480, 128, 128)
        assert raw.header.stamp == crop.header.stamp
        assert raw.header.frame_id == 'gripper_cam_optical_frame'
        expected = crop_resize(image_to_array(raw), (0, 80, 480, 480), (128, 128))
        np.testing.assert_array_equal(image_to_array(crop), expected)
        red = image_to_array(crop)
        assert ((red[..., 0] > 150) & (red[..., 1] < 80)).sum() > 50, 'cube not in the view'
    finally:
        executor.shutdown()
        for node in (driver, camera):
            node.close()
        for node in (driver, camera, probe):
            node.destroy_node()
