"""Offline demonstrations: transitions read back from episode bags (the `transitions` topic the
actor streams and the recorder keeps; simulated demos write the same topic)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.data.bags import list_episodes, read_episode
from hilserl.messages.conventions import Topics
from hilserl.common.progress import progress_bar
from hilserl.data.transition import Transition, TransitionDecoder
from hilserl.learning.image_ops import crop_resize


def load_demo_episodes(root, successful_only: bool = False,
                       unreadable: Optional[List[Tuple[Path, str]]] = None
                       ) -> Iterator[Tuple[Path, dict, List[Transition]]]:
    """(episode directory, episode.json, its transitions in recorded order) of every episode
    under `root`. Episodes marked `rerecord` or cut short by a stop are skipped;
    `successful_only` keeps episodes whose metadata says success. A bag that cannot be read
    (e.g. truncated by a killed recorder) is skipped and listed in `unreadable` as
    (path, reason) when a list is given, else raised."""
    paths = list_episodes(root)
    for path in progress_bar(paths, len(paths), 'reading episode bags', 'episode'):
        try:
            episode = read_episode(path, [Topics.TRANSITIONS])
        except Exception as exc:  # noqa: BLE001 - rosbags raises its own error types
            if unreadable is None:
                raise ValueError(f'{path}: unreadable bag ({exc})') from None
            unreadable.append((path, str(exc)))
            continue
        meta = episode.metadata
        if meta.get('outcome', 'interrupted') in ('rerecord', 'interrupted'):
            continue  # to be recorded again, or cut short by a stop
        if successful_only and not meta.get('success', False):
            continue
        decoder = TransitionDecoder()  # each image is in the bag once
        yield path, meta, [decoder.decode(np.asarray(msg.data, np.uint8).tobytes())[0]
                           for _, msg in episode.messages.get(Topics.TRANSITIONS, [])]


def load_demo_transitions(root, successful_only: bool = False,
                          unreadable: Optional[List[Tuple[Path, str]]] = None,
                          image_shape: Optional[Sequence[int]] = None,
                          resized: Optional[List[Tuple[Path, tuple]]] = None
                          ) -> Iterator[Transition]:
    """Transitions of every episode under `root`, in recorded order (see load_demo_episodes).
    With `image_shape` (C, H, W), episodes recorded at another policy-view size are resized to
    it (listed in `resized` as (path, their shape)); another channel count or aspect ratio is a
    ValueError naming both shapes, never a silent drop."""
    for path, _, transitions in load_demo_episodes(root, successful_only, unreadable):
        if image_shape is not None and transitions and \
                transitions[0].image.shape != tuple(image_shape):
            recorded = transitions[0].image.shape
            transitions = [fit_image_size(t, image_shape, path) for t in transitions]
            if resized is not None:
                resized.append((path, recorded))
        yield from transitions


def check_demo_image_size(root, image_shape: Sequence[int]) -> Optional[tuple]:
    """Before a graph starts: the image shape of the first readable demo under `root` when it
    differs from `image_shape` but can be resized (None when equal or no demos); ValueError
    (one line, both shapes) when it cannot."""
    unreadable: List[Tuple[Path, str]] = []
    for path, _, transitions in load_demo_episodes(root, unreadable=unreadable):
        if transitions:
            if transitions[0].image.shape == tuple(image_shape):
                return None
            fit_image_size(transitions[0], image_shape, path)  # raises when it cannot
            return transitions[0].image.shape
    return None


def fit_image_size(t: Transition, image_shape: Sequence[int], where='') -> Transition:
    """`t` with both images area-resized to (C, H, W) `image_shape`: the same policy view at
    another resolution (a demo recorded under another config's resize_hw_px)."""
    channels, height, width = (int(v) for v in image_shape)
    shape = t.image.shape
    if len(shape) != 3 or shape[0] != channels or \
            abs(shape[1] * width - shape[2] * height) > max(height, width):
        raise ValueError(f'{where}: demo images are {"x".join(map(str, shape))}, this '
                         f'configuration needs {channels}x{height}x{width} (channels and aspect '
                         'ratio must agree to resize: record the demos with the same image '
                         'config)')

    def fit(image: np.ndarray) -> np.ndarray:
        hwc = crop_resize(np.ascontiguousarray(image.transpose(1, 2, 0)),
                          (0, 0, image.shape[1], image.shape[2]), (height, width))
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))
    return dataclasses.replace(t, image=fit(t.image), next_image=fit(t.next_image))
