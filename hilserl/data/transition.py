"""One step of experience, as the actor streams it to the learner and the recorder files it, and
its wire encoding (std_msgs/UInt8MultiArray on `transitions`): a small JSON header (shapes,
dtypes, scalars) + the raw arrays, ~49 kB per image at 128x128. Used by every layer above
(actor, learner, demos, LeRobot export), so it lives here, below them all.

Each image goes on the wire once: within an episode a step's observation is the previous step's
next observation, so `TransitionEncoder` leaves it out (header `image: "previous"`) and
`TransitionDecoder` (one per stream: an arm's actor, an episode's bag) takes it from the
transition before, which it requires to be that episode's previous step. The first step of an
episode, and any whose image differs, carry both. A message decodes alone with
`decode_transition` only when it carries both (every message written before this existed)."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

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


def encode_transition(t: Transition, episode: int = -1, step: int = -1,
                      image_from_previous: bool = False) -> bytes:
    """`image_from_previous`: leave the image out (it is the previous step's next image); use a
    TransitionEncoder, which decides that safely."""
    names = [n for n in _ARRAYS if not (image_from_previous and n == 'image')]
    arrays = [np.ascontiguousarray(getattr(t, name)) for name in names]
    header = {'shapes': [list(a.shape) for a in arrays], 'dtypes': [a.dtype.str for a in arrays],
              'reward': float(t.reward), 'terminated': bool(t.terminated),
              'truncated': bool(t.truncated), 'intervention': bool(t.intervention),
              'episode': int(episode), 'step': int(step)}
    if image_from_previous:
        header['image'] = 'previous'
    head = json.dumps(header).encode()
    return b''.join([_MAGIC, struct.pack('<I', len(head)), head] + [a.tobytes() for a in arrays])


class TransitionEncoder:
    """One actor's stream: each step's image is sent once (see the module docstring)."""

    def __init__(self):
        self._previous: Optional[Tuple[int, int, np.ndarray]] = None  # episode, step, next_image

    def encode(self, t: Transition, episode: int, step: int) -> bytes:
        previous = self._previous
        from_previous = (previous is not None and episode >= 0 and
                         (previous[0], previous[1] + 1) == (episode, step) and
                         np.array_equal(previous[2], t.image))
        if episode >= 0:  # a transition without its place in an episode starts no stream
            self._previous = (episode, step, t.next_image)
        return encode_transition(t, episode, step, image_from_previous=from_previous)


class MissingPreviousImage(ValueError):
    """The image was left out and the step before it did not arrive. Its own next image did:
    the stream goes on from it."""

    def __init__(self, message: str, episode: int, step: int, next_image: np.ndarray):
        super().__init__(message)
        self.position = (episode, step, next_image)


class TransitionDecoder:
    """One stream's decoder: fills in an image left out from the previous step's next image.
    A transition whose previous step did not arrive cannot be completed: ValueError."""

    def __init__(self):
        self._previous: Optional[Tuple[int, int, np.ndarray]] = None

    def decode(self, data) -> Tuple[Transition, dict]:
        try:
            t, header = _decode(data, self._previous)
        except MissingPreviousImage as exc:
            self._previous = exc.position  # the next step can still be completed
            raise
        episode, step = int(header.get('episode', -1)), int(header.get('step', -1))
        if episode >= 0:  # one without its place in an episode leaves the stream as it was
            self._previous = (episode, step, t.next_image)
        return t, header


def decode_transition(data) -> Tuple[Transition, dict]:
    """bytes -> (Transition, header) for a message that carries both images; ValueError on
    anything malformed or on an image left out (decode a stream with TransitionDecoder)."""
    return _decode(data, None)


def _decode(data, previous) -> Tuple[Transition, dict]:
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
        from_previous = header.get('image') == 'previous'
        names = [n for n in _ARRAYS if not (from_previous and n == 'image')]
        if offset != len(data) or len(arrays) != len(names):
            raise ValueError('transition payload size mismatch')
        values = dict(zip(names, arrays))
        if from_previous:
            episode, step = int(header['episode']), int(header['step'])
            if previous is None or (previous[0], previous[1] + 1) != (episode, step):
                raise MissingPreviousImage(
                    f'image of episode {episode} step {step} is the previous step\'s next '
                    'image, and that step did not arrive', episode, step, values['next_image'])
            values['image'] = previous[2]
        t = Transition(reward=float(header['reward']), terminated=bool(header['terminated']),
                       truncated=bool(header['truncated']),
                       intervention=bool(header['intervention']), **values)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f'malformed transition: {exc}') from None
    return t, header
