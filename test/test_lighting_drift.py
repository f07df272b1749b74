"""The lighting-drift watch without ROS: the training images' brightness/contrast range stored
beside a classifier (JSON), and the tracker that warns when live images stay outside it for
`lighting_drift_s` by their own stamps, logs the first drift once, and never stops anything."""
import json

import numpy as np
import pytest

from hilserl.messages.diagnostics import OK, WARN
from reward_classifier_node.lighting import (LIGHTING_FILE, LightingDriftTracker, LightingRange,
                                             drift_tracker, image_statistics, lighting_json,
                                             load_lighting)


def scenes(n, brightness=(120.0, 110.0, 100.0), spread=30.0, seed=0):
    """n noisy (32, 32, 3) images around a per-channel brightness, varying a little per image."""
    rng = np.random.default_rng(seed)
    base = np.array(brightness) * rng.uniform(0.95, 1.05, (n, 1, 1, 1))
    return np.clip(base + rng.normal(0, spread, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_statistics_are_per_channel_mean_and_standard_deviation():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 100
    image[:2, :, 1] = 50
    image[2:, :, 1] = 150
    stats = image_statistics(image)
    assert stats.shape == (1, 2, 3)
    np.testing.assert_allclose(stats[0], [[100, 100, 0], [0, 50, 0]])
    with pytest.raises(ValueError, match='expected'):
        image_statistics(np.zeros((4, 4), np.uint8))


def test_range_is_the_training_percentiles_widened_by_the_augmentation():
    images = scenes(400)
    stats = image_statistics(images)
    lighting = LightingRange.from_images(images)
    p1, p99 = np.percentile(stats[:, 0, 0], [1, 99])
    assert lighting.brightness_low[0] == pytest.approx(p1 * 0.8 - 2)
    assert lighting.brightness_high[0] == pytest.approx(p99 * 1.2 + 2)
    assert lighting.contrast_low[2] < 30 < lighting.contrast_high[2]
    assert LightingRange.from_images(np.zeros((3, 8, 8, 3), np.uint8)).brightness_low == (0,) * 3
    # every training image lies inside; a scene at 40 % of the light does not
    assert not any(lighting.deviations(s) for s in stats)
    dark = image_statistics((images[:1] * 0.4).astype(np.uint8))[0]
    assert [d.split()[:2] for d in lighting.deviations(dark)] == [
        ['brightness', 'r'], ['brightness', 'g'], ['brightness', 'b'],
        ['contrast', 'r'], ['contrast', 'g'], ['contrast', 'b']]
    with pytest.raises(ValueError, match='above'):
        LightingRange((9, 9, 9), (1, 1, 1), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match='3 finite'):
        LightingRange((0, 0), (1, 1, 1), (0, 0, 0), (1, 1, 1))


def test_the_range_is_stored_as_json_beside_the_model(tmp_path):
    lighting = LightingRange.from_images(scenes(50))
    assert load_lighting(tmp_path) is None  # a classifier trained before the check existed
    tracker, why = drift_tracker(tmp_path, 5.0)
    assert tracker is None and LIGHTING_FILE in why
    (tmp_path / LIGHTING_FILE).write_text(json.dumps(lighting_json(lighting)))
    assert load_lighting(tmp_path) == lighting
    tracker, why = drift_tracker(tmp_path, 5.0)
    assert tracker.lighting == lighting and tracker.hold_s == 5.0 and why == ''
    assert drift_tracker(tmp_path, 0.0) == (None, 'lighting_drift_s 0')
    (tmp_path / LIGHTING_FILE).write_text('{"brightness_low": [1, 2]}')
    with pytest.raises(ValueError, match=f'{LIGHTING_FILE}: not a lighting range'):
        load_lighting(tmp_path)
    tracker, why = drift_tracker(tmp_path, 5.0)  # the classifier still runs, unwatched
    assert tracker is None and 'not a lighting range' in why


def test_drift_is_reported_after_the_hold_by_image_stamps_and_logged_once():
    train = scenes(300)
    tracker = LightingDriftTracker(LightingRange.from_images(train), hold_s=2.0)
    normal, dark = scenes(200, seed=1), (scenes(200, seed=2) * 0.35).astype(np.uint8)
    stamp = [100.0]

    def feed(images, period_s=0.125):  # exact in binary: the hold ends on a frame
        updates = []
        for image in images:
            updates.append(tracker.update(image, stamp[0]))
            stamp[0] += period_s
        return updates

    assert not any(u.changed or u.log_line for u in feed(normal))  # quiet on normal frames
    assert tracker.entry().level == OK and tracker.drift_count == 0
    updates = feed(dark[:40])
    changed = [i for i, u in enumerate(updates) if u.changed]
    assert changed == [16]  # 2.0 s of stamps after the first dark frame, not before
    assert updates[16].log_line.startswith('lighting drift: for 2.0 s the camera images were '
                                           'outside the brightness/contrast')
    assert 'brightness r' in updates[16].log_line
    entry = tracker.entry()
    assert entry.level == WARN and entry.name == 'reward_classifier/lighting'
    assert entry.values['drifts'] == '1'
    # back to normal: over at the first normal frame; a later drift is not logged again
    assert [u.changed for u in feed(normal[:3])] == [True, False, False]
    assert tracker.entry().level == OK
    updates = feed(dark[40:80])
    assert [i for i, u in enumerate(updates) if u.changed] == [16]
    assert all(u.log_line is None for u in updates) and tracker.drift_count == 2
    # a dark blip shorter than the hold (with a normal frame between) stays quiet
    feed(normal[:1])
    for _ in range(5):
        assert not any(u.changed for u in feed(dark[:15])) and not feed(normal[:1])[0].changed
    # stamps that go back (a replay restarting) start the hold again instead of firing at once
    feed(dark[:10])
    stamp[0] -= 50.0
    assert not any(u.changed for u in feed(dark[:15]))
    assert feed(dark[:2])[1].changed
    with pytest.raises(ValueError, match='lighting_drift_s'):
        LightingDriftTracker(tracker.lighting, 0.0)
