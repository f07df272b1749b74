"""Checkpoints that fit a disk: replay buffers saved incrementally (only what arrived since the
previous checkpoint is written) and loaded back transition for transition, the newest
`sac.keep_last_checkpoints` checkpoints kept (never the one resumed from), replay segments
deleted only when no kept checkpoint needs them, and the run directory's disk use."""
import dataclasses
import os

import numpy as np
import pytest

from hilserl.configuration.config import ConfigError, LearnerConfig, with_fields
from hilserl.configuration.run_dir import complete_checkpoints, disk_usage_bytes
from hilserl_policy.checkpoint import prune_checkpoints, resume
from hilserl_policy.learner import Learner
from hilserl_policy.replay_buffer import ReplayBuffer, segment_files
from test_sac import tiny_config, transition


class Stream:
    """Episodes of `episode_len` transitions whose next image is the following observation,
    each ending in a break (alternately terminated and truncated, next image not continued)."""

    def __init__(self, seed, episode_len=7):
        self.rng, self.episode_len, self.step, self.next_image = \
            np.random.default_rng(seed), episode_len, 0, None

    def add(self, buffer, n):
        for _ in range(n):
            self.step += 1
            end = self.step % self.episode_len == 0
            t = transition(self.rng, image=self.next_image, terminated=end and self.step % 2 == 0)
            buffer.add(dataclasses.replace(t, truncated=end and self.step % 2 == 1))
            self.next_image = None if end else t.next_image


def assert_same(a: ReplayBuffer, b: ReplayBuffer):
    assert (len(a), a.total_added) == (len(b), b.total_added)
    left, right = a.all(), b.all()
    assert set(left) == set(right)
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def snapshot(buffer: ReplayBuffer, directory) -> ReplayBuffer:
    """An independent copy, through the whole-buffer file format."""
    path = directory / f'snapshot_{len(list(directory.glob("snapshot_*")))}.npz'
    buffer.save(path)
    copy = ReplayBuffer.load(path)
    assert_same(buffer, copy)
    return copy


@pytest.mark.parametrize('capacity', [500, 45])  # 45: the ring wraps between saves
def test_incremental_saves_append_and_load_identical_buffers(tmp_path, capacity):
    stream = Stream(capacity)
    buffer = ReplayBuffer(capacity, (3, 32, 32), 18, 4)
    segments, manifests, expected = tmp_path / 'segments', [], []
    for round_, n in enumerate((30, 0, 17, 1, 25)):  # 0: a save with nothing new
        stream.add(buffer, n)
        manifest = tmp_path / f'ckpt{round_}' / 'online_buffer.json'
        before = {p.name: os.stat(p).st_mtime_ns for p in segments.glob('*')}
        written = buffer.save_incremental(segments, manifest)
        # earlier segments are never rewritten; the new one holds only the new transitions
        after = {p.name: os.stat(p).st_mtime_ns for p in segments.glob('*')}
        assert {k: after[k] for k in before} == before
        if n == 0:
            assert written is None
        else:
            with np.load(written) as data:
                assert data['image'].shape[0] == min(n, capacity)
        manifests.append(manifest)
        expected.append(snapshot(buffer, tmp_path))
    for manifest, want in zip(manifests, expected):  # every checkpoint loads as it was
        assert_same(ReplayBuffer.load_incremental(manifest), want)
    # a loaded buffer continues appending to the same segments
    loaded = ReplayBuffer.load_incremental(manifests[-1], image_dir=tmp_path / 'images')
    stream.add(loaded, 9)
    assert loaded.save_incremental(segments, tmp_path / 'again' / 'online_buffer.json')
    assert loaded.segments[:-1] == [seg for seg in buffer.segments
                                    if seg['end'] > loaded.total_added - len(loaded)]
    assert_same(ReplayBuffer.load_incremental(tmp_path / 'again' / 'online_buffer.json'),
                loaded)


def test_only_the_last_checkpoints_are_kept_and_each_still_loads(tmp_path):
    cfg = tiny_config(keep_last_checkpoints=2, online_buffer_capacity=40)
    learner = Learner(cfg, tmp_path / 'run')
    messages = []
    learner.log = messages.append
    rng = np.random.default_rng(1)
    saved = {}
    for _ in range(5):
        for _ in range(15):  # 75 transitions through a ring of 40: old segments fall out
            learner.add(transition(rng, intervention=rng.random() < 0.3))
        learner.agent.step += 1  # (no update needed to name a checkpoint)
        path = learner.checkpoint()
        saved[path.name] = (snapshot(learner.online, tmp_path),
                            snapshot(learner.offline, tmp_path))
    kept = complete_checkpoints(tmp_path / 'run')
    assert [p.name for p in kept] == sorted(saved)[-2:]
    assert learner.checkpoints_deleted == 3 and len(messages) == 3
    assert 'deleted 1 older' in messages[-1] and '3 deleted so far' in messages[-1]
    for path in kept:  # shared segments of deleted checkpoints survived where needed
        _, _, online, offline, _ = resume(path)
        assert_same(online, saved[path.name][0])
        assert_same(offline, saved[path.name][1])
    needed = {f for p in kept for m in (p / 'training_state').glob('*_buffer.json')
              for f in segment_files(m)}
    on_disk = set((tmp_path / 'run' / 'checkpoints' / 'replay').glob('*/segment_*'))
    assert {p.resolve() for p in on_disk} == needed  # nothing else left behind
    # a resumed run never deletes the checkpoint it resumed from
    resumed = Learner(with_fields(cfg, keep_last_checkpoints=1), tmp_path / 'run')
    origin = resumed.resumed_from
    for _ in range(3):
        resumed.add(transition(rng))
        resumed.agent.step += 1
        resumed.checkpoint()
    assert origin.is_dir() and len(complete_checkpoints(tmp_path / 'run')) == 2
    assert resume(origin)[2].total_added == saved[origin.name][0].total_added


def test_keep_zero_keeps_every_checkpoint_and_the_newest_is_always_kept(tmp_path):
    learner = Learner(tiny_config(keep_last_checkpoints=0), tmp_path)
    rng = np.random.default_rng(2)
    for _ in range(3):
        learner.add(transition(rng))
        learner.agent.step += 1  # (no update needed to name a checkpoint)
        learner.checkpoint()
    assert len(complete_checkpoints(tmp_path)) == 3 and learner.checkpoints_deleted == 0
    assert prune_checkpoints(tmp_path, 1) and len(complete_checkpoints(tmp_path)) == 1
    with pytest.raises(ConfigError, match='keep_last_checkpoints'):
        LearnerConfig(keep_last_checkpoints=-1)


def test_disk_usage_counts_allocated_bytes(tmp_path):
    assert disk_usage_bytes(tmp_path / 'missing') == 0
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'data').write_bytes(os.urandom(300_000))
    with open(tmp_path / 'sparse', 'wb') as f:  # 1 GB long, nothing written
        f.truncate(10 ** 9)
    used = disk_usage_bytes(tmp_path)
    assert 300_000 <= used < 10 ** 7
