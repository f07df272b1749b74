"""Offline demonstrations: transitions read back from episode bags (the `transitions` topic the
actor streams and the recorder keeps; simulated demos write the same topic)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from hilserl.data.bags import list_episodes, read_episode
from hilserl.messages.conventions import Topics
from hilserl.common.progress import progress_bar
from hilserl.data.transition import Transition, TransitionDecoder


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
                          unreadable: Optional[List[Tuple[Path, str]]] = None
                          ) -> Iterator[Transition]:
    """Transitions of every episode under `root`, in recorded order (see load_demo_episodes)."""
    for _, _, transitions in load_demo_episodes(root, successful_only, unreadable):
        yield from transitions
