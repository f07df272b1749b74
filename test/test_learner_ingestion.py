"""Nothing is lost between actor and learner: a real sac_learner node stores every streamed
transition, in order and once, while its updates, weight pushes and checkpoints run, and keeps
receiving while an update or a buffer save takes arbitrarily long; drops and gaps are counted
with their reasons. Plus the ROS-free pieces (sequence gaps, thread count)."""
import array
import os
import threading
import time

import numpy as np
import pytest

from hilserl_policy.learner import SequenceTracker, torch_threads

HW = (32, 32)
CONFIG = """
image:
  resize_hw_px: [32, 32]
policy:
  encoder: small_conv
  freeze_encoder: false
  pretrained_encoder_path: null
  hidden_dims: [32, 32]
  latent_dim: 16
algorithm:
  batch_size: 64
  utd_ratio: 4
replay:
  online_buffer_capacity: 2000
  offline_buffer_capacity: 2000
  replay_image_storage: memory
learner:
  learning_starts: 8
  checkpoint_every_steps: 25
  weight_push_period_s: 0.1
  device: cpu
"""
EPISODE_STEPS = 50
SKIPPED = 333  # never published: the learner must count it missing


def test_sequence_gaps_are_counted_per_episode():
    seq = SequenceTracker()
    assert [seq.observe(0, s) for s in (1, 2, 4, 5)] == [0, 0, 1, 0]
    assert seq.observe(0, 5) == 0 and seq.out_of_order == 1
    assert seq.episode_ended(0, 7) == 0       # its last two may still be on their way
    assert seq.observe(1, 3) == 2 + 2         # they were not; and episode 1 started late
    assert seq.episode_ended(1, 3) == 0
    assert seq.observe(2, 1) == 0
    assert seq.episode_ended(1, 3) == 0       # end event after the next episode began
    seq.observe(3, 1)
    assert seq.episode_ended(2, 4) == 3
    assert seq.observe(-1, -1) == 0           # no header position: not checked
    assert seq.missing == 1 + 4 + 3


def test_learner_threads_default_to_every_core_but_one():
    assert torch_threads(3) == 3
    assert torch_threads(0) == max(1, (os.cpu_count() or 1) - 1)


def _transition(i):
    from hilserl.data.transition import Transition
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
    state = np.full(18, float(i), np.float32)  # the marker: which transition this is
    last = (i % EPISODE_STEPS) == EPISODE_STEPS - 1
    return Transition(image, state, rng.uniform(-1, 1, 4).astype(np.float32), float(i),
                      np.random.default_rng(i + 1).integers(0, 256, (3, *HW), dtype=np.uint8),
                      state + 1, False, last, i % 7 == 0)


def test_learner_node_stores_every_transition_in_order_while_it_trains(ros_context, tmp_path):
    pytest.importorskip('rclpy')
    import torch
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_msgs.msg import Int64MultiArray, UInt8MultiArray

    from hilserl.ros.node import qos_profile
    from hilserl.messages.conventions import Topics
    from hilserl_policy.learner_node import LearnerNode
    from hilserl.data.transition import TransitionEncoder, encode_transition

    config = tmp_path / 'tiny.yaml'
    config.write_text(CONFIG)
    torch_threads_before = torch.get_num_threads()  # the node sets the process's count
    node = LearnerNode(context=ros_context, parameter_overrides=[
        Parameter('config_file', value=str(config)), Parameter('run_dir', value=str(tmp_path)),
        Parameter('device', value='cpu'), Parameter('num_threads', value=1),
        Parameter('summary_period_s', value=1.0)])
    actor = Node('fake_actor', context=ros_context)
    publisher = actor.create_publisher(UInt8MultiArray, Topics.TRANSITIONS,
                                       qos_profile(Topics.TRANSITIONS))
    progress = []
    actor.create_subscription(Int64MultiArray, Topics.LEARNER_PROGRESS,
                              lambda m: progress.append(list(m.data)),
                              qos_profile(Topics.LEARNER_PROGRESS))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(actor)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    n = 1200
    sent = [i for i in range(n) if i != SKIPPED]
    # each image once on the wire: the step after the lost one cannot be completed (dropped)
    stored_expected = [i for i in sent if i != SKIPPED + 1]
    encoder = TransitionEncoder()

    def wait_for(predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.05)
        return predicate()

    def publish(payload: bytes):
        publisher.publish(UInt8MultiArray(data=array.array('B', payload)))

    learner = node.learner
    try:
        assert wait_for(lambda: publisher.get_subscription_count() > 0 and
                        node.count_publishers(Topics.TRANSITIONS) > 0, 30)
        time.sleep(0.5)  # discovery settles on both sides
        for i in range(n):
            if i == 100:
                learner.lock.acquire()  # from here an update that does not end ...
            if i == 700:
                learner.online._lock.acquire()  # ... and from here a checkpoint saving a buffer
            payload = encoder.encode(_transition(i), i // EPISODE_STEPS, i % EPISODE_STEPS + 1)
            if i != SKIPPED:  # lost on the way
                publish(payload)
            if i == 600:  # mid-stream: one undecodable message, one invalid transition
                publish(b'not a transition')
                bad = _transition(i)
                bad.action[0] = np.nan
                publish(encode_transition(bad))
            time.sleep(0.01)  # ~100 Hz: ten times the control rate
            if i == 399:  # ... is not waited for: everything sent so far is stored
                try:
                    assert wait_for(lambda: learner.counts['stored'] == 398, 30), learner.counts
                finally:
                    learner.lock.release()
            if i == 999:  # nor is the buffer: everything is received and queued meanwhile
                try:
                    assert wait_for(lambda: learner.counts['received'] == 999 + 2, 30), \
                        learner.counts
                    assert learner.counts['stored'] <= 698 and learner.pending > 0
                finally:
                    learner.online._lock.release()
        steps_while_streaming = learner.agent.step
        assert wait_for(lambda: learner.counts['stored'] + learner.counts['dropped'] ==
                        len(sent) + 2, 60), learner.counts
        assert steps_while_streaming > 0  # updates ran while the transitions arrived
        online, offline = learner.online.all(), learner.offline.all()
        # all, in order, once, each with its own image
        np.testing.assert_array_equal(online['reward'], stored_expected)
        np.testing.assert_array_equal(online['state'][:, 0], stored_expected)
        for row, i in ((0, 0), (500, stored_expected[500]), (-1, n - 1)):
            np.testing.assert_array_equal(online['image'][row], _transition(i).image)
        np.testing.assert_array_equal(offline['reward'],
                                      [i for i in stored_expected if i % 7 == 0])
        assert learner.counts == {'received': len(sent) + 2, 'stored': len(sent) - 1,
                                  'dropped': 3, 'missing': 1}
        assert dict(learner.drop_reasons) == {'undecodable': 1, 'action': 1, 'image': 1}
        assert 'stored 1198, dropped 3, missing 1' in node.transfer_summary()
        assert wait_for(lambda: progress and progress[-1][1] == len(sent) - 1, 30), \
            progress[-1:]
        received, stored, steps, training = progress[-1]
        assert (received, stored, training) == (len(sent) + 2, len(sent) - 1, 1) and steps >= 1
    finally:
        node.close()
        executor.shutdown()
        spinner.join(timeout=10)
        actor.destroy_node()
        node.destroy_node()
        torch.set_num_threads(torch_threads_before)
    from hilserl.configuration.run_dir import latest_checkpoint
    assert latest_checkpoint(tmp_path) is not None
    # every metrics.csv row is also a TensorBoard scalar (read back by TensorBoard's own reader)
    import csv
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    with open(tmp_path / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    scalars = events.Scalars('train/critic_loss')
    assert [e.step for e in scalars] == [int(r['step']) for r in rows]
    assert [e.value for e in scalars] == pytest.approx([float(r['critic_loss']) for r in rows],
                                                       abs=1e-5)
    assert len(events.Scalars('train/critic_updates_per_s')) == len(rows)


def test_episodes_go_to_tensorboard_by_episode_number(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from hilserl_policy.metrics import TensorBoardSink, TrainingMetrics
    log = TrainingMetrics([TensorBoardSink(tmp_path)], utd_ratio=2)
    episodes = [{'success': True, 'return': 9.4, 'steps': 13, 'interventions': 13},
                {'success': False, 'return': -3.0, 'steps': 60, 'interventions': 15}]
    for number, episode in enumerate(episodes):
        log.episode(number, episode, episodes[:number + 1])
    log.train({'step': 1, 'critic_loss': 0.5, 'step_time_s': 0.25, 'wall_time': 1.0e9})
    log.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()

    def values(tag):
        return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]
    assert values('episode/success') == [(0, 1.0), (1, 0.0)]
    assert values('episode/intervention_rate') == [(0, 1.0), (1, 0.25)]
    assert values('episode/success_rate_last_10') == [(0, 1.0), (1, 0.5)]
    assert values('episode/return') == [(0, 9.4), (1, -3.0)]
    assert values('train/critic_updates_per_s') == [(1, 8.0)]


def test_recent_summary_separates_help_from_success():
    from hilserl_policy.learner import recent_summary
    episodes = [{'success': True, 'steps': 20, 'interventions': 15},
                {'success': True, 'steps': 10, 'interventions': 0},
                {'success': False, 'steps': 10, 'interventions': 0},
                {'success': False, 'steps': 40, 'interventions': 5}]
    assert recent_summary(episodes) == ('last 4: 50% success, 25% without help, human drove '
                                        '25% of steps')
    assert recent_summary([]) == 'no episodes yet'
