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
import math
import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Transition:
    image: np.ndarray        # (C, H, W) uint8, C = 3 * n_obs_steps * cameras (camera-major)
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
            if not _finite_as_float32(value):
                raise ValueError(f'{name} is not finite (as float32, as stored): {value}')
        if not _finite_as_float32(self.reward):
            raise ValueError(f'reward is not finite (as float32, as stored): {self.reward}')
        if np.any(np.abs(self.action) > 1.0 + 1e-6):
            raise ValueError(f'action {self.action} leaves [-1, 1]')


def _finite_as_float32(value) -> bool:
    """Finite, and still finite once stored as float32 (1e300 is not)."""
    value = np.asarray(value)
    if value.dtype.kind not in 'biuf':
        return False
    return bool(np.all(np.isfinite(value)) and np.all(np.abs(value) <= np.finfo(np.float32).max))


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


class InvalidTransition(ValueError):
    """A transition that decoded but does not fit (`Transition.validate`): shapes, dtypes,
    non-finite values, an action outside [-1, 1]. The message starts with the field's name."""


class TransitionDecoder:
    """One stream's decoder: fills in an image left out from the previous step's next image.
    A transition whose previous step did not arrive cannot be completed: ValueError.
    `expected` (image shape, state dim, action dim): each transition must also pass
    `Transition.validate` (InvalidTransition otherwise), and one that does not is never taken as the
    stream's previous step."""

    def __init__(self, expected: Optional[Tuple[Sequence[int], int, int]] = None):
        self._previous: Optional[Tuple[int, int, np.ndarray]] = None
        self.expected = expected

    def decode(self, data) -> Tuple[Transition, dict]:
        try:
            t, header = _decode(data, self._previous)
        except MissingPreviousImage as exc:
            if self.expected is None or _fits(exc.position[2], self.expected[0]):
                self._previous = exc.position  # the next step can still be completed
            raise
        if self.expected is not None:
            try:
                t.validate(*self.expected)
            except ValueError as exc:
                raise InvalidTransition(str(exc)) from None
        episode, step = int(header.get('episode', -1)), int(header.get('step', -1))
        if episode >= 0:  # one without its place in an episode leaves the stream as it was
            self._previous = (episode, step, t.next_image)
        return t, header


def decode_transition(data) -> Tuple[Transition, dict]:
    """bytes -> (Transition, header) for a message that carries both images; ValueError on
    anything malformed or on an image left out (decode a stream with TransitionDecoder)."""
    return _decode(data, None)


def _fits(image: np.ndarray, image_shape) -> bool:
    return image.shape == tuple(image_shape) and image.dtype == np.uint8


# What a header may hold (anyone on the domain can publish on `transitions`): numbers only,
# arrays of at most 3 dimensions, flags as booleans, positions as integers.
_ARRAY_KINDS = 'biuf'
_MAX_NDIM = 3
_FLAGS = ('terminated', 'truncated', 'intervention')
_POSITION_LIMIT = 2 ** 62


def _checked_header(header) -> dict:
    if not isinstance(header, dict):
        raise ValueError('malformed transition: header is not a JSON object')
    shapes, dtypes = header.get('shapes'), header.get('dtypes')
    if not isinstance(shapes, list) or not isinstance(dtypes, list) or \
            len(shapes) != len(dtypes) or len(shapes) > len(_ARRAYS):
        raise ValueError('malformed transition: shapes and dtypes must be lists of one length')
    for shape in shapes:
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(
                type(d) is int and 0 <= d < _POSITION_LIMIT for d in shape):
            raise ValueError(f'malformed transition: array shape {shape!r}')
    for dtype in dtypes:
        if not isinstance(dtype, str) or len(dtype) > 8:
            raise ValueError(f'malformed transition: array dtype {dtype!r}')
    reward = header.get('reward')
    if type(reward) not in (int, float):
        raise ValueError(f'malformed transition: reward {reward!r} is not a number')
    for flag in _FLAGS:
        if type(header.get(flag)) is not bool:
            raise ValueError(f'malformed transition: {flag} {header.get(flag)!r} is not a '
                             'boolean')
    for name in ('episode', 'step'):
        value = header.get(name, -1)
        if type(value) is not int or not -1 <= value < _POSITION_LIMIT:
            raise ValueError(f'malformed transition: {name} {value!r} is not an integer >= -1')
    return header


def _decode(data, previous) -> Tuple[Transition, dict]:
    data = memoryview(bytes(data))
    if len(data) < 8 or bytes(data[:4]) != _MAGIC:
        raise ValueError('not a hilserl transition (bad magic)')
    (n,) = struct.unpack('<I', data[4:8])
    try:
        header = _checked_header(json.loads(bytes(data[8:8 + n])))
        offset = 8 + n
        arrays = []
        for shape, dtype in zip(header['shapes'], header['dtypes']):
            dt = np.dtype(dtype)
            if dt.kind not in _ARRAY_KINDS or dt.itemsize > 8:
                raise ValueError(f'malformed transition: array dtype {dtype!r} is not numeric')
            size = math.prod(shape) * dt.itemsize
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
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f'malformed transition: {type(exc).__name__}: {exc}') from None
    return t, header
