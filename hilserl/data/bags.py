"""Episode bags: rosbag2 (MCAP, zstd-compressed chunks) written and read with `rosbags`.

Layout of one episode:  <run>/episodes/episode_000123/
    bag/metadata.yaml, bag/bag_0.mcap   (plays with `ros2 bag play .../bag`)
    episode.json                        (success, return, length, interventions, config digest...)
Live nodes hand over the CDR bytes they received; offline tools (simulated demos) build
messages with the helpers below. Both go through `EpisodeWriter`.
"""
from __future__ import annotations

import json
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from hilserl.messages.conventions import Topics
from hilserl.messages.conversions import STAMP_LABEL
from hilserl.common.files import write_text_atomic

TYPESTORE_NAME = 'ros2_kilted'

# Topic -> ROS type recorded for every episode (relative names, like the live graph).
EPISODE_TOPICS: Dict[str, str] = {
    Topics.IMAGE_CROP: 'sensor_msgs/msg/Image',
    Topics.JOINT_STATES: 'sensor_msgs/msg/JointState',
    Topics.TCP_POSE: 'geometry_msgs/msg/PoseStamped',
    Topics.EE_ACTION: 'std_msgs/msg/Float32MultiArray',
    Topics.POLICY_ACTION: 'std_msgs/msg/Float32MultiArray',
    Topics.HUMAN_ACTION: 'sensor_msgs/msg/Joy',
    Topics.INTERVENTION: 'std_msgs/msg/Bool',
    Topics.REWARD: 'std_msgs/msg/Float32',
    Topics.SUCCESS_PROBABILITY: 'std_msgs/msg/Float32',
    Topics.EPISODE_EVENTS: 'std_msgs/msg/String',
    Topics.EPISODE_LABEL: 'std_msgs/msg/String',
    Topics.SIM_SUCCESS: 'std_msgs/msg/Bool',
    Topics.SIM_CUBE_POSE: 'geometry_msgs/msg/PoseStamped',
    Topics.TRANSITIONS: 'std_msgs/msg/UInt8MultiArray',
}


def typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores(TYPESTORE_NAME))


def bag_topic(topic: str) -> str:
    """Bags store absolute names; the live graph uses relative names under a namespace."""
    return topic if topic.startswith('/') else '/' + topic


# A chunk of the open bag goes to disk once it holds this many (uncompressed) bytes or its first
# message is this old (wall time), whichever comes first: what a SIGKILLed recorder can lose.
# (rosbags alone keeps 1 MiB in memory, about 3 s of a simulated episode or all of a short one.)
CHUNK_BYTES = 256 * 1024
CHUNK_AGE_S = 1.0


class EpisodeWriter:
    """One rosbag2 per episode. Connections are added lazily for the topics actually used.

    Written chunks reach the file (the OS) at most `chunk_bytes` or `chunk_age_s` after their
    first message (`write_cdr`, or `flush_if_due` from a timer), so a killed process leaves a
    file that `hilserl bag-repair` restores up to that point. While open, the .mcap file holds
    an exclusive flock: repair leaves a bag alone while its writer lives."""

    def __init__(self, episode_dir, topics: Optional[Dict[str, str]] = None,
                 compress: bool = True, chunk_bytes: int = CHUNK_BYTES,
                 chunk_age_s: float = CHUNK_AGE_S, clock=time.monotonic):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.writer import CompressionFormat, CompressionMode
        self.dir = Path(episode_dir)
        self.dir.mkdir(parents=True, exist_ok=False)
        self.topics = dict(EPISODE_TOPICS if topics is None else topics)
        self.store = typestore()
        self._writer = Writer(self.dir / 'bag', version=9, storage_plugin=StoragePlugin.MCAP)
        if compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections = {}
        self.counts: Dict[str, int] = {}
        self.closed = False
        self.chunk_bytes, self.chunk_age_s, self._clock = chunk_bytes, chunk_age_s, clock
        self._pending_since: Optional[float] = None
        storage = self._writer.storage
        # rosbags' McapWriter internals (0.11): the pending chunk and its file
        self.can_flush = all(hasattr(storage, a) for a in ('chunk', 'close_chunk', 'bio'))
        self._lock = _lock_file(next((self.dir / 'bag').glob('*.mcap'), None))

    def _connection(self, topic: str):
        if topic not in self._connections:
            if topic not in self.topics:
                raise KeyError(f'topic {topic!r} is not recorded; known {sorted(self.topics)}')
            self._connections[topic] = self._writer.add_connection(
                bag_topic(topic), self.topics[topic], typestore=self.store)
        return self._connections[topic]

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        """Serialise a rosbags message and write it."""
        data = self.store.serialize_cdr(msg, self.topics[topic])
        self.write_cdr(topic, data, stamp_ns)

    def write_cdr(self, topic: str, data: bytes, stamp_ns: int) -> None:
        self._writer.write(self._connection(topic), int(stamp_ns), bytes(data))
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self._pending_since is None:
            self._pending_since = self._clock()
        self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Write the pending chunk to the file when it is big or old enough; True if it did."""
        if self._pending_since is None or self.closed or not self.can_flush:
            return False
        storage = self._writer.storage
        if not storage.chunk.msgs:  # rosbags closed the chunk itself (1 MiB)
            storage.bio.flush()
            self._pending_since = None
            return False
        if storage.chunk.bio.tell() < self.chunk_bytes and \
                self._clock() - self._pending_since < self.chunk_age_s:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Close the pending chunk (compressed, with its message indexes) into the file and hand
        the file's buffer to the OS: a killed process keeps it."""
        if self.closed or not self.can_flush:
            return
        storage = self._writer.storage
        if storage.chunk.msgs:
            storage.close_chunk()
        storage.bio.flush()
        self._pending_since = None

    def close(self, metadata: Optional[dict] = None) -> Path:
        if not self.closed:
            self._writer.close()
            self.closed = True
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        if metadata is not None:
            write_json_atomic(self.dir / 'episode.json', metadata)
        return self.dir


def _lock_file(path: Optional[Path]):
    """An open file holding an exclusive flock on `path` (released when it is closed or the
    process dies, even by SIGKILL); None where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    if path is None:
        return None
    handle = open(path, 'rb')  # noqa: SIM115 - held open for the bag's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


# --- message builders (rosbags types) ---------------------------------------------------------

class MessageFactory:
    def __init__(self, store=None):
        self.store = store or typestore()
        t = self.store.types
        self._Time = t['builtin_interfaces/msg/Time']
        self._Header = t['std_msgs/msg/Header']
        self._Image = t['sensor_msgs/msg/Image']
        self._Bool = t['std_msgs/msg/Bool']
        self._String = t['std_msgs/msg/String']
        self._Float32 = t['std_msgs/msg/Float32']
        self._F32Array = t['std_msgs/msg/Float32MultiArray']
        self._U8Array = t['std_msgs/msg/UInt8MultiArray']
        self._Layout = t['std_msgs/msg/MultiArrayLayout']
        self._Dim = t['std_msgs/msg/MultiArrayDimension']
        self._JointState = t['sensor_msgs/msg/JointState']
        self._PoseStamped = t['geometry_msgs/msg/PoseStamped']
        self._Pose = t['geometry_msgs/msg/Pose']
        self._Point = t['geometry_msgs/msg/Point']
        self._Quaternion = t['geometry_msgs/msg/Quaternion']

    def header(self, stamp_ns: int, frame_id: str = ''):
        return self._Header(stamp=self._Time(sec=int(stamp_ns // 1_000_000_000),
                                             nanosec=int(stamp_ns % 1_000_000_000)),
                            frame_id=frame_id)

    def image(self, array: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = 'rgb8'):
        array = np.ascontiguousarray(array)
        h, w = array.shape[:2]
        channels = array.shape[2] if array.ndim == 3 else 1
        return self._Image(header=self.header(stamp_ns, frame_id), height=h, width=w,
                           encoding=encoding, is_bigendian=0, step=w * channels,
                           data=array.reshape(-1).view(np.uint8))

    def boolean(self, value: bool):
        return self._Bool(data=bool(value))

    def string(self, value: str):
        return self._String(data=str(value))

    def float32(self, value: float):
        return self._Float32(data=float(value))

    def action(self, values, source: str = ''):
        values = np.asarray(values, dtype=np.float32)
        dims = [self._Dim(label=source, size=values.size, stride=values.size)] if source else []
        return self._F32Array(layout=self._Layout(dim=dims, data_offset=0), data=values)

    def bytes_array(self, payload: bytes):
        return self._U8Array(layout=self._Layout(dim=[], data_offset=0),
                             data=np.frombuffer(payload, np.uint8))

    def joint_state(self, names, position, velocity, effort, stamp_ns: int):
        return self._JointState(header=self.header(stamp_ns), name=list(names),
                                position=np.asarray(position, np.float64),
                                velocity=np.asarray(velocity, np.float64),
                                effort=np.asarray(effort, np.float64))

    def pose(self, xyz, quat_xyzw, stamp_ns: int, frame_id: str):
        x, y, z = (float(v) for v in xyz)
        qx, qy, qz, qw = (float(v) for v in quat_xyzw)
        return self._PoseStamped(header=self.header(stamp_ns, frame_id), pose=self._Pose(
            position=self._Point(x=x, y=y, z=z),
            orientation=self._Quaternion(x=qx, y=qy, z=qz, w=qw)))


# --- reading ------------------------------------------------------------------------------------

@dataclass
class EpisodeData:
    path: Path
    metadata: dict
    messages: Dict[str, List[Tuple[int, object]]]   # topic -> [(stamp_ns, msg)]


@contextmanager
def _reader(bag: Path):
    """rosbags' AnyReader; a truncated or corrupt bag (a killed recorder) becomes one
    ValueError that names it instead of rosbags' own error types."""
    from rosbags.highlevel import AnyReader
    try:
        with AnyReader([bag], default_typestore=typestore()) as reader:
            yield reader
    except Exception as exc:  # noqa: BLE001 - rosbags has several error types
        if not type(exc).__module__.startswith('rosbags'):
            raise
        raise ValueError(f'{bag}: unreadable bag, truncated or corrupt ({exc})') from None


def read_episode(episode_dir, topics: Optional[Iterable[str]] = None) -> EpisodeData:
    """Messages of one episode (selected topics), in time order."""
    episode_dir = Path(episode_dir)
    bag = episode_dir / 'bag'
    if not (bag / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'{episode_dir} has no readable bag (bag/metadata.yaml missing)')
    meta_path = episode_dir / 'episode.json'
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    wanted = None if topics is None else {bag_topic(t) for t in topics}
    messages: Dict[str, List[Tuple[int, object]]] = {}
    with _reader(bag) as reader:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for connection, stamp, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            messages.setdefault(connection.topic.lstrip('/'), []).append((stamp, msg))
    return EpisodeData(episode_dir, metadata, messages)


def list_episodes(root) -> List[Path]:
    """Readable episode directories under `root` (a run, an episodes/ folder, or one episode);
    hidden folders (a bag repair's work in progress) are left out."""
    root = Path(root)
    if (root / 'bag').is_dir():
        return [root]
    if not root.exists():
        raise FileNotFoundError(f'{root} does not exist')
    found = sorted(p.parent for p in root.glob('**/bag/metadata.yaml')
                   if not any(part.startswith('.') for part in p.relative_to(root).parts))
    return [p.parent if p.name == 'bag' else p for p in found]


# Message types whose CDR starts with std_msgs/Header (stamp first).
HEADER_FIRST_TYPES = frozenset({'sensor_msgs/msg/Image', 'sensor_msgs/msg/JointState',
                                'geometry_msgs/msg/PoseStamped', 'sensor_msgs/msg/Joy'})


def header_stamp_ns(cdr) -> Optional[int]:
    """header.stamp of a serialized message whose type starts with std_msgs/Header (see
    HEADER_FIRST_TYPES), read from the CDR bytes without deserializing; None if too short."""
    data = memoryview(cdr)
    if len(data) < 12:
        return None
    little = data[1] == 1  # encapsulation: 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec = struct.unpack('<iI' if little else '>iI', data[4:12])
    return sec * 1_000_000_000 + nanosec


# Types whose layout may carry the tick they belong to as a dimension 'stamp_ns=<int>'
# (hilserl.messages.conversions.action_to_msg; the actor's transitions).
MULTIARRAY_TYPES = frozenset({'std_msgs/msg/Float32MultiArray', 'std_msgs/msg/UInt8MultiArray'})


def layout_stamp_ns(cdr) -> Optional[int]:
    """The 'stamp_ns=<int>' layout label of a serialized std_msgs *MultiArray, read from the CDR
    bytes without deserializing the data (a transition is ~100 kB); None if absent or garbled."""
    data = memoryview(cdr)
    if len(data) < 8:
        return None
    order = '<' if data[1] == 1 else '>'
    pos = 4  # CDR alignment counts from after the 4-byte encapsulation header

    def u32():
        nonlocal pos
        pos = 4 + ((pos - 4 + 3) & ~3)
        if pos + 4 > len(data):
            raise ValueError('short')
        (value,) = struct.unpack(order + 'I', data[pos:pos + 4])
        pos += 4
        return value

    try:
        for _ in range(min(u32(), 16)):
            length = u32()
            label = bytes(data[pos:pos + length]).rstrip(b'\0').decode('utf-8', 'replace')
            pos += length
            u32(), u32()  # size, stride
            key, _, value = label.partition('=')
            if key == STAMP_LABEL:
                return int(value)
    except (ValueError, struct.error):
        return None
    return None


def message_stamp_ns(type_name: str, cdr) -> Optional[int]:
    """The time a serialized message says it belongs to (header stamp, or a layout stamp);
    None where it says none, or one no bag can hold (negative, or past 2**63 ns: any
    participant can publish on a recorded topic)."""
    stamp = None
    if type_name in HEADER_FIRST_TYPES:
        stamp = header_stamp_ns(cdr)
    elif type_name in MULTIARRAY_TYPES:
        stamp = layout_stamp_ns(cdr)
    return stamp if stamp is not None and 0 <= stamp < 2 ** 63 else None


def complete_episodes(root) -> List[Tuple[Path, dict]]:
    """(directory, episode.json) of every episode under `root` that ended (not interrupted by a
    stop); none if `root` does not exist yet."""
    if not Path(root).exists():
        return []
    result = []
    for path in list_episodes(root):
        meta_path = path / 'episode.json'
        try:
            metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except json.JSONDecodeError:
            continue
        if metadata.get('outcome', 'interrupted') != 'interrupted':
            result.append((path, metadata))
    return result


def image_msg_to_array(msg) -> np.ndarray:
    from hilserl.messages.conversions import image_to_array
    return image_to_array(msg)


def success_key_stamps(episode: EpisodeData) -> List[int]:
    """Bag stamps of the human's success key, first first: the teleop's label messages and the
    actor's `label` events (the key it acted on: in the bag even when the recorder had not yet
    discovered the teleop's publisher, as can happen in an episode that starts at once)."""
    stamps = [s for s, m in episode.messages.get(Topics.EPISODE_LABEL, []) if m.data == 'success']
    for stamp, msg in episode.messages.get(Topics.EPISODE_EVENTS, []):
        try:
            event = json.loads(msg.data)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(event, dict) and event.get('event') == 'label' and \
                event.get('label') == 'success':
            stamps.append(stamp)
    return sorted(stamps)


def labelled_frames(episode: EpisodeData, topic: str = Topics.IMAGE_CROP,
                    label_source: str = 'key', frames_before_label: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), labels (N,) {0,1}, stamps_ns (N,)) of one episode.

    label_source 'key': the episode's success label (teleop key) marks the success moment;
    the frame at the label, the `frames_before_label` frames before it (for a human who presses
    late) and every frame after it are positive.
    label_source 'ground_truth': the simulator's per-frame sim/success. An episode starts with
    the cube on the table, so `True` values before the first `False` are the previous episode's
    end arriving late (sim/success has no header: the recorder stamps it on arrival) and are
    read as `False`.
    """
    frames = episode.messages.get(topic, [])
    if not frames:
        return (np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    stamps = np.array([s for s, _ in frames], dtype=np.int64)
    images = np.stack([image_msg_to_array(m) for _, m in frames])
    labels = np.zeros(len(frames), dtype=np.int64)
    if label_source == 'key':
        success_times = success_key_stamps(episode)
        if success_times:
            first_positive = int(np.searchsorted(stamps, success_times[0], side='right')) - 1 \
                - frames_before_label
            labels[max(first_positive, 0):] = 1
    elif label_source == 'ground_truth':
        truth = episode.messages.get(Topics.SIM_SUCCESS, [])
        if truth:
            truth_stamps = np.array([s for s, _ in truth])
            values = np.array([m.data for _, m in truth], dtype=bool)
            if values[0] and not values.all():
                values[:int(np.argmin(values))] = False
            index = np.clip(np.searchsorted(truth_stamps, stamps, side='right') - 1, 0, None)
            labels = values[index].astype(np.int64)
    else:
        raise ValueError(f"label_source={label_source!r}: 'key' or 'ground_truth'")
    return images, labels, stamps


def bag_summary(path) -> str:
    """Human-readable summary of an episode (or a bare bag directory)."""
    path = Path(path)
    episode_dir = path.parent if path.name == 'bag' else path
    bag = episode_dir / 'bag' if (episode_dir / 'bag').is_dir() else path
    if not (bag / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'{path} holds no rosbag2 (metadata.yaml missing)')
    lines = [f'bag: {bag}']
    with _reader(bag) as reader:
        duration_s = (reader.end_time - reader.start_time) * 1e-9 if reader.message_count else 0
        lines.append(f'messages: {reader.message_count}   duration: {duration_s:.2f} s')
        for c in sorted(reader.connections, key=lambda c: c.topic):
            lines.append(f'  {c.topic:<36} {c.msgtype:<34} {c.msgcount}')
    meta = episode_dir / 'episode.json'
    if meta.is_file():
        lines.append('episode: ' + meta.read_text().replace('\n', ' '))
    return '\n'.join(lines)


def episodes_table(root) -> str:
    """One line per episode under `root` (a run or its episodes/ folder) from each episode.json:
    outcome, steps, return, human steps, messages; then the counts by outcome. Episodes a stop
    interrupted or a repair recovered say so; a folder without episodes is an error."""
    episodes = list_episodes(root)
    if not episodes:
        raise FileNotFoundError(f'{root} holds no episode bags (episode_*/bag/metadata.yaml)')
    lines = [f'{"episode":<16} {"outcome":<12} {"steps":>6} {"return":>8} {"human":>6} '
             f'{"messages":>9}  note']
    outcomes: Dict[str, int] = {}
    for path in episodes:
        try:
            meta = json.loads((path / 'episode.json').read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        outcome = meta.get('outcome', 'unknown')
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        counts = meta.get('counts') or {}
        note = 'repaired' if meta.get('repaired') else '' if meta else 'no episode.json'
        episode_return = meta.get('return')
        shown_return = '-' if episode_return is None else f'{episode_return:.2f}'
        line = (f'{path.name:<16} {outcome:<12} {meta.get("steps", "-"):>6} {shown_return:>8} '
                f'{meta.get("interventions", "-"):>6} {sum(counts.values()):>9}  {note}')
        lines.append(line.rstrip())
    ended = sum(n for o, n in outcomes.items() if o in ('success', 'failure', 'timeout'))
    rate = f', success {outcomes.get("success", 0) / ended:.0%} of {ended} ended' if ended else ''
    lines.append(f'{len(episodes)} episodes: ' + ', '.join(
        f'{n} {o}' for o, n in sorted(outcomes.items())) + rate)
    return '\n'.join(lines)


def iter_raw_messages(path) -> Iterator[Tuple[str, str, int, bytes]]:
    """(topic, msgtype, stamp_ns, cdr bytes) of a bag in time order (replay)."""
    path = Path(path)
    bag = path / 'bag' if (path / 'bag').is_dir() else path
    if not (bag / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'{path} holds no rosbag2 (metadata.yaml missing)')
    with _reader(bag) as reader:
        for connection, stamp, raw in reader.messages():
            yield connection.topic.lstrip('/'), connection.msgtype, stamp, raw
