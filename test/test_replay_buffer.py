"""Replay buffer edge cases the mutation run (`make mutate`) found untested: exact contents of
samples, the RLPD split, the on-disk image store, persistence details."""
import dataclasses
import zipfile

import numpy as np
import pytest

from hilserl_policy.replay_buffer import ImageStore, ReplayBuffer, concatenate_batches, sample_mixed
from test_sac import HW, transition


def test_capacity_below_one_and_sampling_an_empty_buffer_are_refused():
    with pytest.raises(ValueError, match='^capacity=0: must be >= 1$'):
        ReplayBuffer(0, (3, *HW), 18, 4)
    buffer = ReplayBuffer(1, (3, *HW), 18, 4)
    with pytest.raises(ValueError, match='^cannot sample from an empty replay buffer$'):
        buffer.sample(1, np.random.default_rng(0))
    buffer.add(dataclasses.replace(transition(np.random.default_rng(0)), reward=2.5))
    assert len(buffer) == 1
    assert buffer.sample(3, np.random.default_rng(0))['reward'].tolist() == [2.5] * 3


@pytest.mark.parametrize('on_disk', [False, True])
def test_image_store_indexing_by_scalar_array_and_mask(on_disk, tmp_path):
    store = ImageStore(4, (3, 2, 5), tmp_path if on_disk else None)
    assert store.on_disk == on_disk
    images = [np.arange(30, dtype=np.uint8).reshape(3, 2, 5) + 40 * k for k in range(4)]
    for k, image in enumerate(images):
        store[k] = image
    np.testing.assert_array_equal(store[2], images[2])  # a scalar index: one (C, H, W) image
    assert store[2].shape == (3, 2, 5)
    np.testing.assert_array_equal(store[np.array([3, 0, 3])],
                                  np.stack([images[3], images[0], images[3]]))
    np.testing.assert_array_equal(store[np.array([False, True, True, False])],
                                  np.stack(images[1:3]))


def test_reading_past_the_image_file_is_an_error_not_garbage(tmp_path):
    store = ImageStore(4, (3, 2, 5), tmp_path)
    with pytest.raises(IOError, match='^replay image 4: short read from the image file$'):
        store[np.array([1, 4])]


def test_concatenating_channels_last_batches_keeps_values_and_layout():
    a = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 2, 2, 3).transpose(0, 3, 1, 2)
    b = a[:1] + 100
    for parts in ([a], [a, b]):
        out = concatenate_batches(parts)
        np.testing.assert_array_equal(out, np.concatenate(parts))
        assert out.transpose(0, 2, 3, 1).flags['C_CONTIGUOUS']  # still channels-last
    flat = concatenate_batches([np.array([1.0, 2.0]), np.array([3.0])])
    np.testing.assert_array_equal(flat, [1.0, 2.0, 3.0])


def test_a_gap_inside_an_episode_keeps_the_next_image():
    """A transition that did not end but whose next image is not the following observation (a
    lost message): its own next image is kept, not the following transition's image."""
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4)
    first = transition(rng)
    second = transition(rng)  # its image is not first.next_image
    third = dataclasses.replace(transition(rng), image=second.next_image)  # continues
    for t in (first, second, third):
        buffer.add(t)
    data = buffer.all()
    np.testing.assert_array_equal(data['next_image'][0], first.next_image)
    np.testing.assert_array_equal(data['next_image'][1], second.next_image)
    np.testing.assert_array_equal(data['next_image'][2], third.next_image)
    assert buffer.next_stored[:3].tolist() == [True, False, False]


def test_every_field_comes_back_exactly_and_stored_arrays_are_copies():
    rng = np.random.default_rng(2)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4)
    flags = [(False, False, False), (True, False, True), (False, True, False),
             (False, False, True)]
    added = []
    for k, (terminated, truncated, intervention) in enumerate(flags):
        t = dataclasses.replace(transition(rng), reward=0.5 * k - 1.0, terminated=terminated,
                                truncated=truncated, intervention=intervention)
        added.append(dataclasses.replace(t, image=t.image.copy(),
                                         next_image=t.next_image.copy()))
        buffer.add(t)
        t.image[:] = 0  # the caller reuses its arrays: the buffer holds its own copies
        t.next_image[:] = 0
    data = buffer.all()
    assert data['terminated'].tolist() == [f[0] for f in flags]
    assert data['truncated'].tolist() == [f[1] for f in flags]
    assert data['intervention'].tolist() == [f[2] for f in flags]
    assert data['reward'].tolist() == [-1.0, -0.5, 0.0, 0.5]
    for key, field in (('image', 'image'), ('next_image', 'next_image'), ('state', 'state'),
                       ('next_state', 'next_state'), ('action', 'action')):
        np.testing.assert_array_equal(data[key], np.stack([getattr(t, field) for t in added]),
                                      err_msg=key)


def test_cached_features_follow_images_next_images_and_breaks():
    """With a featurizer every sample carries the features of its image and of its next image:
    the following slot's inside an episode, the kept one at a break, the pending newest one."""
    def featurizer(images):  # (N, C, H, W) uint8 -> (N, 1, 2) float16, a function of pixels
        return np.stack([images[:, 0, 0, 0], images[:, 1, 2, 3]], -1)[:, None].astype(
            np.float16)

    rng = np.random.default_rng(3)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4, featurizer=featurizer)
    previous = None
    for k in range(6):  # episodes of 3: a break after transitions 2 and 5
        t = transition(rng, terminated=k % 3 == 2, image=previous)
        buffer.add(t)
        previous = None if k % 3 == 2 else t.next_image
    data = buffer.all()
    np.testing.assert_array_equal(data['features'], featurizer(data['image']))
    np.testing.assert_array_equal(data['next_features'], featurizer(data['next_image']))
    batch = buffer.sample(32, np.random.default_rng(0))
    assert 'image' not in batch  # cached features: the update needs no pixels
    np.testing.assert_array_equal(batch['next_features'],
                                  buffer.sample(32, np.random.default_rng(0), images=True)[
                                      'next_features'])


def test_a_saved_buffer_holds_one_image_per_transition_plus_break_images(tmp_path):
    """Format 2: image.npy once (no next_image.npy, no cached features), the next images only
    at stream breaks; about one image per transition on disk."""
    def featurizer(images):
        return images[:, :1, :2, :2].astype(np.float16)[:, None]

    rng = np.random.default_rng(4)
    buffer = ReplayBuffer(16, (3, *HW), 18, 4, featurizer=featurizer)
    previous = None
    for k in range(10):  # one break after transition 4; the newest one's next image pending
        t = transition(rng, terminated=k == 4, image=previous)
        buffer.add(t)
        previous = None if k == 4 else t.next_image
    buffer.save(tmp_path / 'b.npz')
    with zipfile.ZipFile(tmp_path / 'b.npz') as zf:
        names = zf.namelist()
    assert names.count('image.npy') == 1
    assert not {'next_image.npy', 'features.npy', 'next_features.npy'} & set(names)
    with np.load(tmp_path / 'b.npz') as data:
        assert int(data['format_version']) == 2
        assert data['next_break_index'].tolist() == [4, 9]
        assert data['image'].shape == (10, 3, *HW)
    image_bytes = 3 * HW[0] * HW[1]
    assert (tmp_path / 'b.npz').stat().st_size < 16 * image_bytes  # 12 images + small arrays


def test_rlpd_split_follows_the_ratio_and_an_empty_side_gives_all_to_the_other():
    rng = np.random.default_rng(5)
    online, offline = ReplayBuffer(8, (3, *HW), 18, 4), ReplayBuffer(8, (3, *HW), 18, 4)
    online.add(transition(rng, intervention=False))
    offline.add(transition(rng, intervention=True))
    batch = sample_mixed(online, offline, 8, 0.25, rng)  # round(8 * 0.25) = 2 online
    assert batch['intervention'].tolist() == [False] * 2 + [True] * 6
    empty = ReplayBuffer(8, (3, *HW), 18, 4)
    assert sample_mixed(empty, offline, 5, 0.5, rng)['intervention'].tolist() == [True] * 5
    assert sample_mixed(online, empty, 5, 0.5, rng)['intervention'].tolist() == [False] * 5
    assert sample_mixed(online, None, 3, 0.5, rng)['intervention'].tolist() == [False] * 3
