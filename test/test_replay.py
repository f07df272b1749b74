"""`hilserl bag-info` and the bag_replay node on a recorded episode: every message comes back on
its topic, in order, with the recorded spacing scaled by the rate factor."""
import json
import time

import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from hilserl_tools import cli  # noqa: E402
from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.data.bags import read_episode  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402
from hilserl_tools.bag_replay_node import ReplayNode  # noqa: E402


@pytest.fixture(scope='module')
def episode(sim_episodes):
    _, episodes = sim_episodes
    return next(path for path, meta in episodes if meta['success'])


def test_bag_info_summarises_topics_and_metadata(episode, capsys):
    assert cli.main(['bag-info', str(episode)]) == 0
    out = capsys.readouterr().out
    assert '/gripper_cam/image_crop' in out and 'sensor_msgs/msg/Image' in out
    assert '"success"' in out
    assert cli.main(['bag-info', str(episode / 'missing')]) == 2


def test_replay_republishes_every_message_with_its_timing(ros_context, episode):
    recorded = read_episode(episode)
    n_images = len(recorded.messages[Topics.IMAGE_CROP])
    n_joints = len(recorded.messages[Topics.JOINT_STATES])
    stamps = [s for s, _ in recorded.messages[Topics.IMAGE_CROP]]
    recorded_span_s = (stamps[-1] - stamps[0]) * 1e-9
    rate = 4.0
    probe = Node('probe', context=ros_context)
    seen = {'image': [], 'joints': [], 'events': []}
    probe.create_subscription(Image, Topics.IMAGE_CROP,
                              lambda m: seen['image'].append(time.monotonic()),
                              qos_profile(Topics.IMAGE_CROP))
    probe.create_subscription(JointState, Topics.JOINT_STATES, seen['joints'].append,
                              qos_profile(Topics.JOINT_STATES))
    probe.create_subscription(String, Topics.EPISODE_EVENTS, seen['events'].append,
                              qos_profile(Topics.EPISODE_EVENTS))
    replay = ReplayNode(context=ros_context, parameter_overrides=[
        Parameter('bag', value=str(episode)), Parameter('rate', value=rate)])
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(replay)
    executor.add_node(probe)
    try:
        deadline = time.monotonic() + 30
        while not replay.finished and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.005)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.01)
    finally:
        executor.shutdown()
        replay.destroy_node()
        probe.destroy_node()
    assert replay.finished and replay.published == sum(len(v) for v in recorded.messages.values())
    assert len(seen['image']) == n_images and len(seen['joints']) == n_joints
    # every recorded event comes back (start, end, and the label the actor acted on, if any)
    kinds = [json.loads(m.data)['event'] for m in seen['events']]
    assert len(kinds) == len(recorded.messages[Topics.EPISODE_EVENTS])
    assert kinds.count('start') == 1 and kinds.count('end') == 1, kinds
    span_s = seen['image'][-1] - seen['image'][0]
    # the recorded spacing is kept (never faster); a loaded machine may only stretch it
    assert recorded_span_s / rate * 0.7 < span_s < recorded_span_s / rate * 3 + 5.0
