"""The classifier workflow tells the person the truth: episodes marked re-record are left out of
training and evaluation (and said to be), and a classifier that never finds a success is
announced as such rather than saved silently as the best."""
import json
import shutil

import numpy as np

from reward_classifier_node.evaluate import format_table
from reward_classifier_node.model import ClassifierConfig, load_classifier
from reward_classifier_node.train import (EpisodeFrames, TrainClassifierConfig, load_frames,
                                          train_classifier)


def test_episodes_marked_rerecord_are_left_out_and_named(sim_episodes, tmp_path):
    _, episodes = sim_episodes
    for path, _ in episodes[:3]:
        shutil.copytree(path, tmp_path / path.name)
    marked = tmp_path / episodes[1][0].name / 'episode.json'
    meta = json.loads(marked.read_text())
    marked.write_text(json.dumps({**meta, 'outcome': 'rerecord'}))
    rerecorded = []
    frames = load_frames(tmp_path, 'ground_truth', rerecorded=rerecorded)
    assert [e.name for e in frames] == [episodes[0][0].name, episodes[2][0].name]
    assert rerecorded == [episodes[1][0].name]
    lines = []
    try:
        train_classifier(tmp_path, tmp_path / 'clf', ClassifierConfig(hidden_dim=8),
                         TrainClassifierConfig(epochs=1, label_source='ground_truth'),
                         progress=lines.append)
    except ValueError:
        pass  # two episodes may not split into both classes: the line before matters here
    assert f'left out 1 episodes marked re-record: {episodes[1][0].name}' in lines


def test_the_evaluation_table_shows_left_out_episodes_apart():
    rows = [{'episode': 'episode_000000', 'frames': 20, 'labelled': 12, 'predicted': None,
             'max_probability': 0.2, 'verdict': 'MISSED'},
            {'episode': 'episode_000001', 'frames': None, 'labelled': None, 'predicted': None,
             'max_probability': None, 'verdict': 'left out (marked re-record)'}]
    table = format_table(rows).splitlines()
    assert 'left out (marked re-record)' in table[2]
    assert table[-1] == ('1 episodes, 1 with a false positive or a missed success '
                         '(1 marked re-record left out)')


def test_a_classifier_that_never_finds_success_is_announced(tmp_path):
    """Every frame looks the same, so no threshold separates success: validation recall is 0 in
    every epoch, and the run says so in a warning naming the saved model."""
    black = np.zeros((6, 32, 32, 3), np.uint8)
    success = np.array([0, 0, 0, 1, 1, 1])
    episodes = [EpisodeFrames(f'episode_{i:06d}', black.copy(),
                              success.copy() if i % 2 else np.zeros(6, int)) for i in range(6)]
    lines = []
    result = train_classifier(None, tmp_path / 'clf',
                              ClassifierConfig(hidden_dim=8, image_hw_px=(32, 32)),
                              TrainClassifierConfig(epochs=2, val_fraction=0.34),
                              progress=lines.append, episodes=episodes)
    assert result['best']['recall'] == 0
    warning = [line for line in lines if line.startswith('WARNING: recall 0.000')]
    assert len(warning) == 1 and str(tmp_path / 'clf') in warning[0]
    assert load_classifier(tmp_path / 'clf')[2]['validation']['recall'] == 0


def test_an_epoch_that_finds_successes_beats_a_more_accurate_blind_one():
    from reward_classifier_node import train
    blind = {'recall': 0.0, 'accuracy': 0.95}
    seeing = {'recall': 0.4, 'accuracy': 0.90}
    assert train.better_epoch(seeing, blind) and not train.better_epoch(blind, seeing)
    assert train.better_epoch({'recall': 0.5, 'accuracy': 0.96}, seeing)


def test_the_classifier_takes_the_size_of_its_frames_and_refuses_another(tmp_path):
    """Bags recorded with image.resize_hw_px 48x48 train a 48x48 classifier whatever the
    default; frames of another size are refused in one line (the node counts them as bad
    frames), and so are episodes of mixed sizes."""
    import pytest

    from reward_classifier_node.model import success_probabilities
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    episodes = [EpisodeFrames(f'episode_{i:06d}', rng.integers(0, 255, (6, 48, 48, 3), np.uint8),
                              labels.copy() if i % 2 else np.zeros(6, int)) for i in range(4)]
    train_classifier(None, tmp_path / 'clf', ClassifierConfig(hidden_dim=8),
                     TrainClassifierConfig(epochs=1, val_fraction=0.5), progress=lambda _: None,
                     episodes=episodes)
    model, _, _ = load_classifier(tmp_path / 'clf')
    assert tuple(model.config.image_hw_px) == (48, 48)
    assert success_probabilities(model, episodes[0].images).shape == (6,)
    with pytest.raises(ValueError, match=r'frames of 64x64 px, but the classifier was trained '
                                         r'on 48x48') as refused:
        success_probabilities(model, np.zeros((1, 64, 64, 3), np.uint8))
    assert '\n' not in str(refused.value)
    mixed = episodes + [EpisodeFrames('episode_000009', np.zeros((6, 32, 32, 3), np.uint8),
                                      labels.copy())]
    with pytest.raises(ValueError, match=r'several sizes \(32x32, 48x48 px\)'):
        train_classifier(None, tmp_path / 'mixed', ClassifierConfig(hidden_dim=8),
                         TrainClassifierConfig(epochs=1), episodes=mixed)
