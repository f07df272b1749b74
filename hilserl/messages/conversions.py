"""numpy <-> ROS message conversions without cv_bridge.

Readers are duck-typed: they accept rclpy messages and `rosbags` messages alike, so the same code
serves live nodes and recorded bags. Writers import the message module lazily (no rclpy needed).
"""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence, Tuple

import numpy as np

# encoding -> (channels, dtype)
IMAGE_ENCODINGS = {
    'rgb8': (3, np.uint8),
    'bgr8': (3, np.uint8),
    'rgba8': (4, np.uint8),
    'bgra8': (4, np.uint8),
    'mono8': (1, np.uint8),
    'mono16': (1, np.uint16),
    '32FC1': (1, np.float32),
}


class ConversionError(ValueError):
    """A message that cannot be turned into a valid array (or the reverse)."""


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) array (a view on the message buffer when possible).

    Row padding (``step`` larger than ``width * channels * itemsize``) is honoured.
    """
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f'unsupported image encoding {encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}')
    channels, dtype = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if height <= 0 or width <= 0:
        raise ConversionError(f'image has no pixels: {width}x{height}')
    if step < row_bytes:
        raise ConversionError(
            f'image step {step} is smaller than width*channels*bytes = {row_bytes}')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ConversionError(
            f'image data has {buffer.size} bytes, expected step*height = {step}*{height} = '
            f'{step * height} ({width}x{height} {encoding})')
    rows = buffer.reshape(height, step)[:, :row_bytes]
    big_endian = bool(getattr(msg, 'is_bigendian', 0))
    out_dtype = np.dtype(dtype).newbyteorder('>' if big_endian else '<') if itemsize > 1 \
        else np.dtype(dtype)
    array = rows.view(out_dtype) if rows.flags['C_CONTIGUOUS'] else \
        np.ascontiguousarray(rows).view(out_dtype)
    return array.reshape(height, width, channels)


def array_to_image(array: np.ndarray, encoding: str, stamp=None, frame_id: str = '',
                   msg_type=None):
    """(H, W, C) or (H, W) array -> sensor_msgs/Image with a dense step."""
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f'unsupported image encoding {encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}')
    channels, dtype = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise ConversionError(
            f'{encoding} needs an (H, W, {channels}) array, got shape {array.shape}')
    if array.dtype != dtype:
        raise ConversionError(f'{encoding} needs dtype {np.dtype(dtype).name}, got {array.dtype}')
    if msg_type is None:
        from sensor_msgs.msg import Image as msg_type
    msg = msg_type()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * channels * array.dtype.itemsize)
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Any supported 8-bit colour/mono image -> (H, W, 3) uint8 RGB."""
    if encoding == 'rgb8':
        return array
    if encoding == 'bgr8':
        return array[:, :, ::-1]
    if encoding in ('rgba8',):
        return array[:, :, :3]
    if encoding in ('bgra8',):
        return array[:, :, 2::-1]
    if encoding == 'mono8':
        return np.repeat(array, 3, axis=2)
    raise ConversionError(f'cannot convert {encoding!r} to rgb8')


def joint_state_to_arrays(msg, joint_names: Sequence[str]):
    """sensor_msgs/JointState -> (position, velocity, effort) in ``joint_names`` order.

    Missing velocity/effort come back as zeros; a missing joint or a non-finite position raises.
    """
    names = list(msg.name)
    position = np.asarray(msg.position, dtype=np.float64)
    if len(position) != len(names):
        raise ConversionError(
            f'JointState has {len(names)} names but {len(position)} positions')
    index = {name: i for i, name in enumerate(names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise ConversionError(f'JointState lacks joints {missing} (has {names})')
    order = [index[n] for n in joint_names]

    def field(values, label):
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return np.zeros(len(joint_names))
        if values.size != len(names):
            raise ConversionError(
                f'JointState has {len(names)} names but {values.size} {label} values')
        return values[order]

    pos = position[order]
    if not np.all(np.isfinite(pos)):
        raise ConversionError(f'JointState has non-finite positions: {pos.tolist()}')
    return pos, field(msg.velocity, 'velocity'), field(msg.effort, 'effort')


def arrays_to_joint_state(joint_names: Sequence[str], position, velocity=None, effort=None,
                          stamp=None, msg_type=None):
    """Arrays -> sensor_msgs/JointState; velocity and effort are always filled (see bag notes)."""
    n = len(joint_names)
    position = np.asarray(position, dtype=np.float64)
    velocity = np.zeros(n) if velocity is None else np.asarray(velocity, dtype=np.float64)
    effort = np.zeros(n) if effort is None else np.asarray(effort, dtype=np.float64)
    for label, values in (('position', position), ('velocity', velocity), ('effort', effort)):
        if values.shape != (n,):
            raise ConversionError(f'{label} has shape {values.shape}, expected ({n},)')
    if msg_type is None:
        from sensor_msgs.msg import JointState as msg_type
    msg = msg_type()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = list(joint_names)
    msg.position = position.tolist()
    msg.velocity = velocity.tolist()
    msg.effort = effort.tolist()
    return msg


def action_from_msg(msg, action_dim: int) -> np.ndarray:
    """std_msgs/Float32MultiArray (or any ``.data`` sequence) -> validated action vector.

    Wrong length and NaN/Inf raise: an invalid action is never clipped into a valid one.
    """
    return validated_action(msg.data, action_dim)


def event_from_json(text) -> Optional[dict]:
    """An episode/events message (JSON) as a dict; None for anything that is not a JSON object
    (any participant on the domain can publish on the topic)."""
    try:
        event = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


# float32 rounding of a value in [-1, 1] stays inside this
ACTION_BOUND_TOLERANCE = 1e-6


def validated_action(values, action_dim: int, bound: Optional[float] = None) -> np.ndarray:
    """`action_dim` finite values; with `bound`, each within [-bound, bound] as well."""
    action = np.asarray(values, dtype=np.float64)
    if action.shape != (action_dim,):
        raise ConversionError(f'action has {action.size} values, expected {action_dim}')
    if not np.all(np.isfinite(action)):
        raise ConversionError(f'action has non-finite values: {action.tolist()}')
    if bound is not None and np.any(np.abs(action) > bound + ACTION_BOUND_TOLERANCE):
        raise ConversionError(f'action {action.tolist()} leaves [-{bound:g}, {bound:g}]')
    return action


def action_to_msg(action, source: str = '', msg_type=None, stamp_ns: Optional[int] = None):
    """Action vector -> std_msgs/Float32MultiArray, its source in layout.dim[0].label.

    `stamp_ns`: the time of the observation the action answers. It travels as a second layout
    dimension labelled 'stamp_ns=<int>' of size 1, so the array still reads as 4 values (a 4x1
    array) to any generic consumer, while the simulated clock can tell which tick it is for.
    """
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(action)):
        raise ConversionError(f'refusing to publish non-finite action {action.tolist()}')
    if msg_type is None:
        from std_msgs.msg import Float32MultiArray as msg_type
    msg = msg_type()
    msg.data = action.tolist()
    if source or stamp_ns is not None:
        from std_msgs.msg import MultiArrayDimension
        msg.layout.dim = [MultiArrayDimension(label=source, size=action.size, stride=action.size)]
        if stamp_ns is not None:
            msg.layout.dim.append(stamp_dimension(stamp_ns))
    return msg


def stamp_dimension(stamp_ns: int):
    """A size-1 layout dimension 'stamp_ns=<int>': the tick a MultiArray message belongs to
    (read back by `action_stamp_ns`, and by the recorder from the raw bytes)."""
    from std_msgs.msg import MultiArrayDimension
    return MultiArrayDimension(label=f'{STAMP_LABEL}={int(stamp_ns)}', size=1, stride=1)


STAMP_LABEL = 'stamp_ns'


def action_source(msg) -> str:
    """The source label of an action message ('' if none)."""
    dims = getattr(msg.layout, 'dim', None) or []
    return dims[0].label if dims else ''


def action_stamp_ns(msg) -> Optional[int]:
    """The observation stamp an action answers (see `action_to_msg`), or None."""
    for dim in (getattr(msg.layout, 'dim', None) or [])[1:]:
        key, _, value = dim.label.partition('=')
        if key == STAMP_LABEL:
            try:
                return int(value)
            except ValueError:
                raise ConversionError(f'bad action stamp label {dim.label!r}') from None
    return None


def human_to_joy(action, intervention: bool, stamp_ns: int, msg_type=None):
    """Human device output -> sensor_msgs/Joy: axes [dx, dy, dz, gripper] in [-1, 1],
    buttons [intervention], header.stamp the observation (or capture) time it belongs to.
    One message carries action, intervention and time together, so the actor can never pair
    a human action with another tick's intervention flag."""
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(action)):
        raise ConversionError(f'refusing to publish non-finite action {action.tolist()}')
    if msg_type is None:
        from sensor_msgs.msg import Joy as msg_type
    msg = msg_type()
    msg.header.stamp = nanoseconds_to_stamp(stamp_ns)
    msg.axes = action.tolist()
    msg.buttons = [int(bool(intervention))]
    return msg


def joy_to_human(msg, action_dim: int) -> Tuple[np.ndarray, bool, int]:
    """sensor_msgs/Joy from the teleop node -> (action, intervention, stamp_ns); validated."""
    action = validated_action(msg.axes, action_dim)
    if len(msg.buttons) < 1:
        raise ConversionError('teleop Joy message has no intervention button')
    return action, bool(msg.buttons[0]), stamp_to_nanoseconds(msg.header.stamp)


def stamp_to_nanoseconds(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def nanoseconds_to_stamp(stamp_ns: int, msg_type=None):
    if stamp_ns < 0:
        raise ConversionError(f'cannot stamp {stamp_ns} ns')
    if msg_type is None:
        from builtin_interfaces.msg import Time as msg_type
    return msg_type(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def stamp_to_seconds(stamp) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float, msg_type=None):
    """float seconds -> builtin_interfaces/Time."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ConversionError(f'cannot stamp {seconds} s')
    if msg_type is None:
        from builtin_interfaces.msg import Time as msg_type
    sec = int(math.floor(seconds))
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return msg_type(sec=sec, nanosec=nanosec)
