"""Replay buffers with uint8 images, bounded capacity, thread safety and save/load.

Memory: each transition costs one uint8 image (3 * n_obs_steps * H * W bytes; 49,152 B at
128x128, n_obs_steps 1) plus 2 * state_dim * 4 + action_dim * 4 + 8 bytes. The next image is
not stored twice: inside an episode it is the next slot's image (the actor streams transitions
in order); only where the stream breaks (episode end, a gap) is it kept separately, in storage
whose untouched pages cost nothing. Images live in process memory or, given `image_dir`, in an
unnamed temporary file there (`ImageStore`). `RLPD` mixes the online and offline buffers 50/50.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from hilserl.common.files import write_text_atomic
from hilserl.data.transition import Transition

KEYS = ('image', 'state', 'action', 'reward', 'next_image', 'next_state', 'terminated',
        'truncated', 'intervention')


class ImageStore:
    """A fixed number of same-shaped (C, H, W) uint8 images, indexed like an array
    (`store[i] = image`, `store[index_array]`). In memory by default; given `directory`, in an
    unnamed temporary file there, written with pwrite and read with preadv: the pixels then sit
    in the OS page cache rather than in this process, and the file vanishes when the process
    ends, crash or not. Unwritten slots cost nothing either way (calloc pages / a sparse file).

    Pixels are kept channels-last (H, W, C) and read back as (N, C, H, W) views with
    channels-last strides: the convolutions want that layout, and converting a batch from
    (C, H, W) costs more than the rest of the input pipeline."""

    def __init__(self, capacity: int, shape, directory=None):
        self.capacity, self.shape = int(capacity), tuple(shape)
        c, h, w = self.shape
        self.stored_shape = (h, w, c)
        self.item_bytes = int(np.prod(self.shape))
        self._array: Optional[np.ndarray] = None
        self._file = None
        if directory is None:
            self._array = np.zeros((self.capacity, *self.stored_shape), np.uint8)
        else:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=directory, prefix='replay_images_')
            os.ftruncate(self._file.fileno(), self.capacity * self.item_bytes)

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def __setitem__(self, index: int, image: np.ndarray) -> None:
        assert image.shape == self.shape, image.shape
        hwc = np.asarray(image, np.uint8).transpose(1, 2, 0)
        if self._array is not None:
            self._array[index] = hwc
        else:
            os.pwrite(self._file.fileno(), np.ascontiguousarray(hwc), int(index) * self.item_bytes)

    def __getitem__(self, index) -> np.ndarray:
        if np.ndim(index) == 0:
            return self[np.asarray([index])][0]
        index = np.asarray(index)
        if self._array is not None:
            return self._array[index].transpose(0, 3, 1, 2)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        out = np.empty((len(index), *self.stored_shape), np.uint8)
        fd = self._file.fileno()
        for row, i in enumerate(index.tolist()):
            if os.preadv(fd, [out[row]], i * self.item_bytes) != self.item_bytes:
                raise IOError(f'replay image {i}: short read from the image file')
        return out.transpose(0, 3, 1, 2)


def concatenate_batches(arrays):
    """np.concatenate that keeps channels-last image batches channels-last (a plain concatenate
    would transpose them back to (N, C, H, W) memory order)."""
    if arrays[0].ndim == 4:
        return np.concatenate([a.transpose(0, 2, 3, 1) for a in arrays]).transpose(0, 3, 1, 2)
    return np.concatenate(arrays)


class ReplayBuffer:
    """`featurizer` (optional): uint8 images (N, C, H, W) -> float16 features (N, K, ...); when
    given, every stored image (and every separately kept next image) gets its features once,
    and samples carry `features` / `next_features` instead of needing the encoder."""

    def __init__(self, capacity: int, image_shape, state_dim: int, action_dim: int,
                 featurizer: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 image_dir=None):
        if capacity < 1:
            raise ValueError(f'capacity={capacity}: must be >= 1')
        self.capacity = int(capacity)
        self.image_shape = tuple(image_shape)
        self.state_dim, self.action_dim = state_dim, action_dim
        c = self.capacity
        self.images = ImageStore(c, self.image_shape, image_dir)
        self.next_images = ImageStore(c, self.image_shape, image_dir)  # only at stream breaks
        self.next_stored = np.zeros(c, bool)
        self.states = np.zeros((c, state_dim), np.float32)
        self.next_states = np.zeros((c, state_dim), np.float32)
        self.actions = np.zeros((c, action_dim), np.float32)
        self.rewards = np.zeros(c, np.float32)
        self.terminated = np.zeros(c, bool)
        self.truncated = np.zeros(c, bool)
        self.interventions = np.zeros(c, bool)
        self.size = 0
        self.cursor = 0            # next slot to write
        self.total_added = 0
        self._pending_next: Optional[np.ndarray] = None  # next image of the newest transition
        self.featurizer = featurizer
        self.features = self.next_features = None  # allocated at the first add
        self._pending_next_features = None
        # Incremental saves: the segment files (oldest first) that hold transitions
        # [first, end) in total_added numbering, and the directory they live in.
        self.segments: List[dict] = []
        self.segment_dir: Optional[Path] = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transition, features: Optional[np.ndarray] = None) -> None:
        """`features`: the featurizer's output for `t.image`, when the caller computed it (in
        a batch, once for both buffers); computed here otherwise."""
        t.validate(self.image_shape, self.state_dim, self.action_dim)
        if self.featurizer is None:
            features = None
        elif features is None:  # outside the lock: sampling goes on meanwhile
            features = self.featurizer(t.image[None])[0]
        # One lock for every read and write of the arrays: `add` (the learner's ingest thread)
        # and `sample` (its update thread) run concurrently; each holds it for a copy only.
        with self._lock:
            if features is not None and self.features is None:
                self._allocate_features(features.shape)  # both arrays before any sample sees one
            newest = (self.cursor - 1) % self.capacity
            if self._pending_next is not None:
                # The newest transition's next image is implicit only if this obs continues it.
                continues = (not (self.terminated[newest] or self.truncated[newest])
                             and np.array_equal(self._pending_next, t.image))
                if not continues:
                    self.next_images[newest] = self._pending_next
                    self.next_stored[newest] = True
                    if features is not None:
                        self.next_features[newest] = self._pending_features()
            i = self.cursor
            self.images[i] = t.image
            self.next_stored[i] = False
            self.states[i] = t.state
            self.next_states[i] = t.next_state
            self.actions[i] = t.action
            self.rewards[i] = t.reward
            self.terminated[i] = t.terminated
            self.truncated[i] = t.truncated
            self.interventions[i] = t.intervention
            self._pending_next = np.array(t.next_image, copy=True)
            if features is not None:
                self.features[i] = features
            self._pending_next_features = None  # computed only if needed (stream break, sample)
            self.cursor = (i + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
            self.total_added += 1

    def _allocate_features(self, shape) -> None:
        # np.zeros (calloc): untouched pages cost no memory; zeros_like would write them
        self.features = np.zeros((self.capacity, *shape), np.float16)
        self.next_features = np.zeros(self.features.shape, np.float16)

    def _pending_features(self) -> np.ndarray:
        if self._pending_next_features is None:
            self._pending_next_features = self.featurizer(self._pending_next[None])[0]
        return self._pending_next_features

    def sample(self, batch_size: int, rng: np.random.Generator,
               images: Optional[bool] = None) -> Dict[str, np.ndarray]:
        """`images`: include pixels (default: only when there are no cached features, since an
        update then never looks at them)."""
        with self._lock:
            if self.size == 0:
                raise ValueError('cannot sample from an empty replay buffer')
            idx = rng.integers(0, self.size, size=batch_size)
            return self._gather(idx, images=self.features is None if images is None else images)

    def _gather(self, idx: np.ndarray, images: bool = True, features: bool = True
                ) -> Dict[str, np.ndarray]:
        newest = (self.cursor - 1) % self.capacity
        stored = self.next_stored[idx]
        is_newest = idx == newest
        extra = {}
        if images:
            next_images = self.images[(idx + 1) % self.capacity]
            if stored.any():
                next_images[stored] = self.next_images[idx[stored]]
            if is_newest.any():
                next_images[is_newest] = self._pending_next
            extra = {'image': self.images[idx], 'next_image': next_images}
        if features and self.features is not None:
            next_features = self.features[(idx + 1) % self.capacity]
            if stored.any():
                next_features[stored] = self.next_features[idx[stored]]
            if is_newest.any():
                next_features[is_newest] = self._pending_features()
            extra.update(features=self.features[idx], next_features=next_features)
        return {**extra, 'state': self.states[idx],
                'action': self.actions[idx], 'reward': self.rewards[idx],
                'next_state': self.next_states[idx],
                'terminated': self.terminated[idx], 'truncated': self.truncated[idx],
                'intervention': self.interventions[idx]}

    def all(self) -> Dict[str, np.ndarray]:
        """Every stored transition (oldest first); for tests and conversions."""
        with self._lock:
            order = (np.arange(self.size) + (self.cursor - self.size)) % self.capacity
            return self._gather(order)

    # --- persistence --------------------------------------------------------------------------
    def _order(self) -> np.ndarray:
        """Slots of the stored transitions, oldest first."""
        return (np.arange(self.size) + (self.cursor - self.size)) % self.capacity

    def save(self, path, chunk: int = 256) -> None:
        """Write the filled part (oldest first) as an .npz, atomically (tmp + rename).

        Images are streamed in chunks, so saving never holds a second copy of the buffer in
        memory, and a transition's next image is written only where it is not the following
        transition's image (the stream breaks the buffer already keeps, and the newest
        transition): a file costs about one image per transition."""
        with self._lock:
            order = self._order()
            breaks = np.flatnonzero(self.next_stored[order])
            break_images = self.next_images[order[breaks]]
            if self.size:  # the newest transition's next image is still pending
                breaks = np.append(breaks, self.size - 1)
                break_images = np.concatenate([break_images, self._pending_next[None]])
            arrays = self._gather(order, images=False, features=False)
            arrays.update(capacity=np.asarray(self.capacity),
                          total_added=np.asarray(self.total_added),
                          format_version=np.asarray(2), next_break_index=breaks.astype(np.int64),
                          next_break_image=np.ascontiguousarray(break_images))
            _write_npz(path, arrays, self.images, order, self.image_shape, chunk)

    def save_incremental(self, segment_dir, manifest_path, chunk: int = 256) -> Optional[Path]:
        """Save by appending: the transitions added since the previous incremental save go to
        one new segment file in `segment_dir` (shared by every checkpoint of the run), and
        `manifest_path` (JSON) lists the segments that hold this buffer now. A checkpoint at
        200,000 transitions thus writes only what arrived since the last one. A segment keeps
        its transitions, the next images at stream breaks (including that of the previous
        segment's last transition, known only now) and its last transition's pending next image.
        Returns the new segment (None when nothing was added)."""
        segment_dir = Path(segment_dir).resolve()
        with self._lock:
            total, oldest = self.total_added, self.total_added - self.size
            if self.segment_dir != segment_dir:  # first save here (or loaded from elsewhere)
                self.segments, self.segment_dir = [], segment_dir
            start = max(self.segments[-1]['end'] if self.segments else oldest, oldest)
            written = None
            if total > start:
                rows = self._slots(np.arange(start, total))
                known = np.arange(max(start - 1, oldest), total - 1)  # next images now known
                known = known[self.next_stored[self._slots(known)]]
                arrays = self._gather(rows, images=False, features=False)
                arrays.update(first=np.asarray(start), format_version=np.asarray(3),
                              next_break_index=known.astype(np.int64),
                              next_break_image=np.ascontiguousarray(
                                  self.next_images[self._slots(known)]),
                              tail_next_image=np.ascontiguousarray(self._pending_next))
                name = f'segment_{start:012d}_{total:012d}_{uuid.uuid4().hex[:8]}.npz'
                written = segment_dir / name
                _write_npz(written, arrays, self.images, rows, self.image_shape, chunk)
                self.segments.append({'file': name, 'first': int(start), 'end': int(total)})
            self.segments = [seg for seg in self.segments if seg['end'] > oldest]
            manifest = {'format': 'replay_segments', 'version': 1, 'capacity': self.capacity,
                        'total_added': total, 'size': self.size,
                        'image_shape': list(self.image_shape), 'state_dim': self.state_dim,
                        'action_dim': self.action_dim,
                        'segment_dir': os.path.relpath(segment_dir,
                                                       Path(manifest_path).resolve().parent),
                        'segments': list(self.segments)}
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
        return written

    def _slots(self, global_index: np.ndarray) -> np.ndarray:
        """total_added numbering -> buffer slots (valid for the stored transitions)."""
        return (self.cursor - (self.total_added - np.asarray(global_index))) % self.capacity

    @classmethod
    def load_incremental(cls, manifest_path, capacity: Optional[int] = None, featurizer=None,
                         image_dir=None) -> 'ReplayBuffer':
        """The buffer a `save_incremental` manifest describes, transition for transition."""
        manifest_path = Path(manifest_path)
        manifest = json.loads(manifest_path.read_text())
        segment_dir = (manifest_path.parent / manifest['segment_dir']).resolve()
        total, size = int(manifest['total_added']), int(manifest['size'])
        oldest = total - size
        buffer = cls(int(capacity or manifest['capacity']), manifest['image_shape'],
                     manifest['state_dim'], manifest['action_dim'], None, image_dir)
        segments = manifest['segments']
        breaks: Dict[int, np.ndarray] = {}
        for seg in segments:
            with np.load(segment_dir / seg['file'], allow_pickle=False) as data:
                breaks.update((i, image) for i, image in zip(
                    data['next_break_index'].tolist(), data['next_break_image']) if i >= oldest)
        if segments:
            with np.load(segment_dir / segments[-1]['file'], allow_pickle=False) as data:
                breaks.setdefault(total - 1, data['tail_next_image'])

        def rows():  # (global index, small arrays, row, image) of every stored transition
            for seg in segments:
                path = segment_dir / seg['file']
                with np.load(path, allow_pickle=False) as data:
                    small = {k: data[k] for k in KEYS if k in data.files}
                images = _read_images(path)
                next(images)  # the shape
                for row, image in enumerate(images):
                    g = seg['first'] + row
                    if g >= oldest:
                        yield g, small, row, image

        stream = rows()
        current = next(stream, None)
        while current is not None:
            following = next(stream, None)
            g, small, row, image = current
            if g in breaks:
                next_image = breaks[g]
            elif following is not None and following[0] == g + 1:
                next_image = following[3]
            else:
                raise IOError(f'{manifest_path}: segment data misses the next image of '
                              f'transition {g}')
            buffer.add(Transition(image, small['state'][row], small['action'][row],
                                  float(small['reward'][row]), next_image,
                                  small['next_state'][row], bool(small['terminated'][row]),
                                  bool(small['truncated'][row]),
                                  bool(small['intervention'][row])))
            current = following
        if len(buffer) != min(size, buffer.capacity):
            raise IOError(f'{manifest_path}: {len(buffer)} transitions found, {size} expected')
        buffer.total_added = total
        buffer.segments = [dict(seg) for seg in segments]
        buffer.segment_dir = segment_dir
        if featurizer is not None:
            buffer.attach_featurizer(featurizer)
        return buffer

    @classmethod
    def load(cls, path, capacity: Optional[int] = None, featurizer=None, image_dir=None
             ) -> 'ReplayBuffer':
        """Read a saved buffer, streaming its images. Features are not saved: a featurizer
        recomputes them while loading."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'replay buffer file {path} does not exist')
        with np.load(path, allow_pickle=False) as data:
            small = {k: data[k] for k in data.files if k not in ('image', 'next_image')}
            if 'next_image' in data.files:  # format 1: every next image stored
                next_images = data['next_image']
                breaks = dict(enumerate(next_images))
            else:
                breaks = dict(zip(small['next_break_index'].tolist(),
                                  small['next_break_image']))
        images = _read_images(path)
        shape = next(images)
        buffer = cls(int(capacity or small['capacity']), shape[1:], small['state'].shape[1],
                     small['action'].shape[1], None, image_dir)
        image = next(images, None)
        for i in range(shape[0]):
            following = next(images, None)
            next_image = breaks[i] if i in breaks else following
            buffer.add(Transition(image, small['state'][i], small['action'][i],
                                  float(small['reward'][i]), next_image,
                                  small['next_state'][i], bool(small['terminated'][i]),
                                  bool(small['truncated'][i]), bool(small['intervention'][i])))
            image = following
        buffer.total_added = int(small['total_added'])
        if featurizer is not None:
            buffer.attach_featurizer(featurizer)
        return buffer

    def attach_featurizer(self, featurizer: Callable[[np.ndarray], np.ndarray],
                          batch: int = 64) -> None:
        """Compute the feature cache of every stored image in batches (far faster than one
        image at a time, as `add` does) and keep `featurizer` for later transitions."""
        with self._lock:
            self.featurizer = featurizer
            self._pending_next_features = None
            self.features = self.next_features = None
            for first in range(0, self.size, batch):
                rows = np.arange(first, min(first + batch, self.size))
                features = featurizer(np.ascontiguousarray(self.images[rows]))
                if self.features is None:
                    self._allocate_features(features.shape[1:])
                self.features[rows] = features
            stored = np.flatnonzero(self.next_stored[:self.size])
            for first in range(0, len(stored), batch):
                rows = stored[first:first + batch]
                self.next_features[rows] = featurizer(np.ascontiguousarray(self.next_images[rows]))


def _write_npz(path, arrays: Dict[str, np.ndarray], images: ImageStore, rows: np.ndarray,
               image_shape, chunk: int = 256) -> None:
    """`arrays` and the images of `rows` (as image.npy, streamed in chunks) as an uncompressed
    .npz, atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            with zf.open(f'{name}.npy', 'w', force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array))
        with zf.open('image.npy', 'w', force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {
                'descr': '|u1', 'fortran_order': False, 'shape': (len(rows), *image_shape)})
            for first in range(0, len(rows), chunk):
                f.write(np.ascontiguousarray(images[rows[first:first + chunk]]).tobytes())
    os.replace(tmp, path)


def _read_images(path) -> Iterator:
    """The shape of a saved file's image.npy, then its images one at a time (streamed)."""
    with zipfile.ZipFile(path) as zf, zf.open('image.npy') as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        if dtype != np.uint8:  # never an object (pickled) array: its bytes are not read as one
            raise IOError(f'{path}: image.npy holds {dtype}, not uint8 images')
        yield tuple(shape)
        item_bytes = int(np.prod(shape[1:]))
        for _ in range(shape[0]):
            raw = f.read(item_bytes)
            if len(raw) != item_bytes:
                raise IOError(f'{path}: truncated image data')
            yield np.frombuffer(raw, np.uint8).reshape(shape[1:])


def segment_files(manifest_path) -> List[Path]:
    """The segment files a `save_incremental` manifest needs."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    segment_dir = (manifest_path.parent / manifest['segment_dir']).resolve()
    return [segment_dir / seg['file'] for seg in manifest['segments']]


def sample_mixed(online: ReplayBuffer, offline: Optional[ReplayBuffer], batch_size: int,
                 online_ratio: float, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """RLPD: round(batch * online_ratio) online + the rest offline (all online if the offline
    buffer is empty or absent, all offline if the online one is)."""
    n_online = int(round(batch_size * online_ratio))
    if offline is None or len(offline) == 0:
        n_online = batch_size
    elif len(online) == 0:
        n_online = 0
    parts = []
    if n_online:
        parts.append(online.sample(n_online, rng))
    if batch_size - n_online:
        parts.append(offline.sample(batch_size - n_online, rng))
    if len(parts) == 1:
        return parts[0]
    return {k: concatenate_batches([p[k] for p in parts]) for k in parts[0]}
