"""Compact byte encodings for what crosses DDS between actor and learner (std_msgs/UInt8MultiArray).

Transition: a small JSON header (shapes, dtypes, scalars) + the raw arrays, ~49 kB at 128x128.
Policy weights: safetensors bytes with metadata (step, backbone digest).
"""
from __future__ import annotations

import json
import struct
from typing import Dict, Tuple

import numpy as np

from hilserl_policy.replay import Transition

_MAGIC = b'HTR1'
_ARRAYS = ('image', 'state', 'action', 'next_image', 'next_state')


def encode_transition(t: Transition, episode: int = -1, step: int = -1) -> bytes:
    arrays = [np.ascontiguousarray(getattr(t, name)) for name in _ARRAYS]
    header = {'shapes': [list(a.shape) for a in arrays], 'dtypes': [a.dtype.str for a in arrays],
              'reward': float(t.reward), 'terminated': bool(t.terminated),
              'truncated': bool(t.truncated), 'intervention': bool(t.intervention),
              'episode': int(episode), 'step': int(step)}
    head = json.dumps(header).encode()
    return b''.join([_MAGIC, struct.pack('<I', len(head)), head] + [a.tobytes() for a in arrays])


def decode_transition(data) -> Tuple[Transition, dict]:
    """bytes -> (Transition, header); ValueError on anything malformed."""
    data = memoryview(bytes(data))
    if len(data) < 8 or bytes(data[:4]) != _MAGIC:
        raise ValueError('not a hilserl transition (bad magic)')
    (n,) = struct.unpack('<I', data[4:8])
    try:
        header = json.loads(bytes(data[8:8 + n]))
        offset = 8 + n
        arrays = []
        for shape, dtype in zip(header['shapes'], header['dtypes']):
            dt = np.dtype(dtype)
            size = int(np.prod(shape)) * dt.itemsize
            if offset + size > len(data):
                raise ValueError('truncated transition payload')
            # a copy: the message buffer is read-only and short-lived
            arrays.append(np.frombuffer(data[offset:offset + size], dt).reshape(shape).copy())
            offset += size
        if offset != len(data) or len(arrays) != len(_ARRAYS):
            raise ValueError('transition payload size mismatch')
        values = dict(zip(_ARRAYS, arrays))
        t = Transition(reward=float(header['reward']), terminated=bool(header['terminated']),
                       truncated=bool(header['truncated']),
                       intervention=bool(header['intervention']), **values)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f'malformed transition: {exc}') from None
    return t, header


def encode_weights(state: Dict, metadata: Dict[str, str]) -> bytes:
    from safetensors.torch import save
    return save(state, metadata={k: str(v) for k, v in metadata.items()})


def decode_weights(data) -> Tuple[Dict, Dict[str, str]]:
    from safetensors.torch import load
    raw = bytes(data)
    state = load(raw)
    # safetensors keeps metadata in its JSON header: parse it directly from the bytes
    (n,) = struct.unpack('<Q', raw[:8])
    metadata = json.loads(raw[8:8 + n]).get('__metadata__', {}) or {}
    return state, metadata
