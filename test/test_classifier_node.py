"""reward_classifier node fed a replayed episode: it flips to success within 3 frames of the
labelled success, exactly where the offline evaluation says; the threshold is validated at
runtime; bad frames are counted, not fatal."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, Float32  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402
from hilserl.messages.conversions import array_to_image  # noqa: E402
from reward_classifier_node.classifier_node import ClassifierNode  # noqa: E402
from reward_classifier_node.evaluate import evaluate_episodes, first_debounced  # noqa: E402
from reward_classifier_node.model import ClassifierConfig, load_classifier  # noqa: E402
from reward_classifier_node.train import (TrainClassifierConfig, load_frames,  # noqa: E402
                                          predict_proba, train_classifier)

DEBOUNCE = 2


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sim_episodes):
    root = tmp_path_factory.mktemp('clf')
    data, _ = sim_episodes
    train_classifier(data, root / 'model', ClassifierConfig(hidden_dim=64),
                     TrainClassifierConfig(epochs=25, val_fraction=0.25, target_fpr=0.02,
                                           label_source='ground_truth', max_minutes=2),
                     progress=lambda line: None)
    episodes = load_frames(data, label_source='ground_truth')
    return root, episodes


def test_replayed_episode_flips_within_3_frames_of_the_label(ros_context, trained):
    root, episodes = trained
    episode = next(e for e in episodes if e.labels.any())
    labelled = int(np.argmax(episode.labels))
    model, threshold, _ = load_classifier(root / 'model')
    expected = first_debounced(predict_proba(model, episode.images), threshold, DEBOUNCE)
    node = ClassifierNode(context=ros_context, parameter_overrides=[
        Parameter('model_dir', value=str(root / 'model')),
        Parameter('debounce_frames', value=DEBOUNCE)])
    probe = Node('probe', context=ros_context)
    images = probe.create_publisher(Image, Topics.IMAGE_CROP, qos_profile(Topics.IMAGE_CROP))
    flags, probs = [], []
    probe.create_subscription(Bool, Topics.SUCCESS, lambda m: flags.append(m.data),
                              qos_profile(Topics.SUCCESS))
    probe.create_subscription(Float32, Topics.SUCCESS_PROBABILITY,
                              lambda m: probs.append(m.data),
                              qos_profile(Topics.SUCCESS_PROBABILITY))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    try:
        deadline = time.monotonic() + 5
        while images.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for frame in episode.images:  # one frame at a time, like a 10 Hz camera
            images.publish(array_to_image(frame, 'rgb8'))
            target = len(flags) + 1
            deadline = time.monotonic() + 2
            while len(flags) < target and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.01)
        assert len(flags) == len(episode.images)
        flipped = flags.index(True) if True in flags else None
        assert flipped == expected  # the node decides exactly as the offline evaluation
        assert flipped is not None and abs(flipped - labelled) <= 3, (flipped, labelled)
        # runtime threshold: validated
        result = node.set_parameters([Parameter('threshold', value=0.9)])
        assert result[0].successful and node.detector.threshold == 0.9
        refused = node.set_parameters([Parameter('threshold', value=1.5)])
        assert not refused[0].successful and node.detector.threshold == 0.9
        # a malformed frame is counted, nothing is published for it
        bad = array_to_image(episode.images[0], 'rgb8')
        bad.data = bad.data[:100]
        count = len(flags)
        images.publish(bad)
        deadline = time.monotonic() + 1
        while node.bad_frames == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        assert node.bad_frames == 1 and len(flags) == count
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()


def test_evaluation_table_names_false_positives_and_misses(trained, sim_episodes):
    root, _ = trained
    rows = evaluate_episodes(root / 'model', sim_episodes[0], 'ground_truth', DEBOUNCE)
    assert len(rows) == 8
    assert all(r['verdict'] for r in rows)
    assert sum(r['labelled'] is not None for r in rows) >= 4
