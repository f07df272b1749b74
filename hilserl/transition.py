"""One step of experience, as the actor streams it to the learner and the recorder files it, and
its wire encoding (std_msgs/UInt8MultiArray on `transitions`): a small JSON header (shapes,
dtypes, scalars) + the raw arrays, ~49 kB per image at 128x128. Used by every layer above
(actor, learner, demos, LeRobot export), so it lives here, below them all."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Transition:
    image: np.ndarray        # (C, H, W) uint8, C = 3 * n_obs_steps
    state: np.ndarray        # (D,) float32
    action: np.ndarray       # (A,) float32 in [-1, 1]: the executed action (human's if intervening)
    reward: float
    next_image: np.ndarray
    next_state: np.ndarray
    terminated: bool         # task ended (success): no bootstrap
    truncated: bool          # time limit / reset: bootstrap, but the episode ends here
    intervention: bool       # the human chose this action

    def validate(self, image_shape, state_dim, action_dim) -> None:
        if self.image.shape != tuple(image_shape) or self.image.dtype != np.uint8:
            raise ValueError(f'image {self.image.shape} {self.image.dtype}: expected '
                             f'{tuple(image_shape)} uint8')
        if self.next_image.shape != tuple(image_shape) or self.next_image.dtype != np.uint8:
            raise ValueError(f'next_image {self.next_image.shape} {self.next_image.dtype}: '
                             f'expected {tuple(image_shape)} uint8')
        for name, value, size in (('state', self.state, state_dim),
                                  ('next_state', self.next_state, state_dim),
                                  ('action', self.action, action_dim)):
            if np.shape(value) != (size,):
                raise ValueError(f'{name} has shape {np.shape(value)}, expected ({size},)')
            if not np.all(np.isfinite(value)):
                raise ValueError(f'{name} is not finite: {value}')
        if not np.isfinite(self.reward):
            raise ValueError(f'reward is not finite: {self.reward}')
        if np.any(np.abs(self.action) > 1.0 + 1e-6):
            raise ValueError(f'action {self.action} leaves [-1, 1]')


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
