"""bench/pretrain_encoder.py end to end on a few small episode bags: it trains the ResNet-10 on
the policy-view frames only, saves it in the helper2424/resnet10 layout, and the result loads
from its directory (into config/train.yaml's SAC agent too) and, as a repo id, from a Hugging
Face cache."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import pretrain_encoder  # noqa: E402

from hilserl.data.bags import EpisodeWriter, MessageFactory  # noqa: E402
from hilserl.learning.encoders import ResNet10, load_pretrained_encoder  # noqa: E402
from hilserl.messages.conventions import Topics  # noqa: E402

SIZE = 64


def write_episode(path: Path, rng, frames: int) -> None:
    """A bag with policy-view frames (a red square moving over grey) and a reward topic, which
    the pretraining must not read."""
    factory = MessageFactory()
    writer = EpisodeWriter(path)
    for k in range(frames):
        image = np.full((SIZE, SIZE, 3), 120, np.uint8)
        top, left = rng.integers(0, SIZE - 12, 2)
        image[top:top + 12, left:left + 12] = (220, 30, 30)
        stamp = (k + 1) * 100_000_000
        writer.write(Topics.IMAGE_CROP, factory.image(image, stamp, 'gripper_cam'), stamp)
        writer.write(Topics.REWARD, factory.float32(0.0), stamp)
    writer.close({'outcome': 'timeout', 'success': False, 'steps': frames})


@pytest.fixture
def episodes(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_episode(tmp_path / 'rec' / 'episodes' / f'episode_{i:06d}', rng, 6)
    return tmp_path / 'rec'


def test_read_frames_reads_the_policy_view_of_every_episode(episodes):
    frames = pretrain_encoder.read_frames(episodes, (SIZE, SIZE))
    assert [f.shape for f in frames] == [(6, 3, SIZE, SIZE)] * 3
    assert frames[0].dtype == np.uint8 and frames[0][:, 0].max() == 220
    resized = pretrain_encoder.read_frames(episodes, (32, 32))
    assert resized[0].shape == (6, 3, 32, 32)


def test_no_frames_is_refused_in_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='no episode with gripper_cam/image_crop frames'):
        pretrain_encoder.read_frames(tmp_path / 'empty', (SIZE, SIZE))


def test_pretraining_saves_weights_that_load_from_the_directory_and_the_hub_cache(
        episodes, tmp_path, monkeypatch, capsys):
    before = torch.get_num_threads()
    out, cache = tmp_path / 'encoder', tmp_path / 'hub'
    try:
        assert pretrain_encoder.main(
            ['--episodes', str(episodes), '--output', str(out), '--image-size', str(SIZE),
             '--epochs', '1', '--batch-size', '6', '--threads', '1',
             '--repo-id', 'local/resnet10-test', '--hub-cache', str(cache)]) == 0
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    assert 'epoch 1/1: train loss' in printed and 'held-out loss' in printed
    # config/train.yaml's agent (the frozen ResNet-10 of the seed's set-up) pointed at it
    assert f'loaded pretrained ResNet10 weights from {out}' in printed
    config = json.loads((out / 'config.json').read_text())
    assert config == ResNet10().hub_config()
    summary = json.loads((out / 'pretraining.json').read_text())
    assert (summary['frames_train'], summary['frames_held_out'], summary['epochs']) == (12, 6, 1)
    assert all(np.isfinite(row['train_loss']) for row in summary['history'])

    from_dir, from_cache = ResNet10().eval(), ResNet10().eval()
    assert 'loaded pretrained ResNet10' in load_pretrained_encoder(from_dir, out)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    load_pretrained_encoder(from_cache, 'local/resnet10-test')
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(from_dir(x), from_cache(x))
        assert not torch.equal(from_dir(x), ResNet10().eval()(x))  # trained, not the init
