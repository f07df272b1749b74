"""reward_classifier node fed a replayed episode: it flips to success within 3 frames of the
labelled success, exactly where the offline evaluation says; the threshold is validated at
runtime; bad frames are counted, not fatal. Its lighting-drift warning fires on a darkened
simulated camera and stays quiet on the normal one."""
import shutil
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from std_msgs.msg import Bool, Float32  # noqa: E402

from hilserl.ros.node import qos_profile  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402
from hilserl.messages.conversions import array_to_image, seconds_to_stamp  # noqa: E402
from reward_classifier_node.classifier_node import ClassifierNode  # noqa: E402
from reward_classifier_node.evaluate import evaluate_episodes, first_debounced  # noqa: E402
from reward_classifier_node.lighting import (DIAGNOSTIC_NAME, LIGHTING_FILE,  # noqa: E402
                                             image_statistics, load_lighting)
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


def test_lighting_drift_warns_on_a_darkened_camera_and_not_on_normal_frames(ros_context, trained,
                                                                            tmp_path):
    root, episodes = trained
    lighting = load_lighting(root / 'model')  # stored by train_classifier beside the weights
    assert lighting is not None
    frames = np.concatenate([e.images for e in episodes])  # validation episodes included
    assert not any(lighting.deviations(s) for s in image_statistics(frames))
    # a classifier from before the check: it runs, unwatched, and says so in diagnostics
    old = tmp_path / 'old_model'
    shutil.copytree(root / 'model', old)
    (old / LIGHTING_FILE).unlink()
    unwatched = ClassifierNode(context=ros_context, parameter_overrides=[
        Parameter('model_dir', value=str(old))])
    assert unwatched.lighting is None and LIGHTING_FILE in unwatched.lighting_off
    unwatched.destroy_node()

    node = ClassifierNode(context=ros_context, parameter_overrides=[
        Parameter('model_dir', value=str(root / 'model')),
        Parameter('lighting_drift_s', value=1.0)])
    probe = Node('probe', context=ros_context)
    images = probe.create_publisher(Image, Topics.IMAGE_CROP, qos_profile(Topics.IMAGE_CROP))
    probs, levels = [], []
    probe.create_subscription(Float32, Topics.SUCCESS_PROBABILITY,
                              lambda m: probs.append(m.data),
                              qos_profile(Topics.SUCCESS_PROBABILITY))
    probe.create_subscription(
        DiagnosticArray, Topics.DIAGNOSTICS,
        lambda m: levels.extend(s.level for s in m.status if s.name == DIAGNOSTIC_NAME),
        qos_profile(Topics.DIAGNOSTICS))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    stamp_s = [1000.0]

    def show(frame):
        """One frame stamped 0.1 s after the last (a 10 Hz camera by its stamps, however fast
        this machine runs), answered before the next."""
        msg = array_to_image(frame, 'rgb8')
        msg.header.stamp = seconds_to_stamp(stamp_s[0])
        stamp_s[0] += 0.1
        target = len(probs) + 1
        images.publish(msg)
        deadline = time.monotonic() + 10
        while len(probs) < target and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        assert len(probs) == target

    warn = DiagnosticStatus.WARN
    try:
        deadline = time.monotonic() + 10
        while images.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for frame in frames:
            show(frame)
        assert node.lighting.drift_count == 0 and warn not in levels
        darkened = (frames[:20].astype(np.float32) * 0.35).astype(np.uint8)  # 2 s, hold 1 s
        for frame in darkened[:9]:
            show(frame)
        assert node.lighting.drift_count == 0  # under the hold: not yet
        for frame in darkened[9:]:
            show(frame)
        deadline = time.monotonic() + 10
        while warn not in levels and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert warn in levels and node.lighting.drift_count == 1
        assert node.lighting.entry().message.startswith('images outside the training lighting')
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()
