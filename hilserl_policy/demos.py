"""Offline demonstrations: transitions read back from episode bags (the `transitions` topic the
actor streams and the recorder keeps; simulated demos write the same topic)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from hilserl.bags import list_episodes, read_episode
from hilserl.conventions import Topics
from hilserl_policy.replay import Transition
from hilserl_policy.transport import decode_transition


def load_demo_transitions(root, successful_only: bool = False) -> Iterator[Transition]:
    """Transitions of every episode under `root`, in recorded order. Episodes marked
    `rerecord` are skipped; `successful_only` keeps episodes whose metadata says success."""
    for path in list_episodes(root):
        episode = read_episode(path, [Topics.TRANSITIONS])
        meta = episode.metadata
        if meta.get('outcome', 'interrupted') in ('rerecord', 'interrupted'):
            continue  # to be recorded again, or cut short by a stop
        if successful_only and not meta.get('success', False):
            continue
        for _, msg in episode.messages.get(Topics.TRANSITIONS, []):
            transition, _ = decode_transition(np.asarray(msg.data, np.uint8).tobytes())
            yield transition
