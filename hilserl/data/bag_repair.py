"""Episode bags a killed recorder left behind, made readable again (no ROS needed).

A recorder killed mid-episode leaves <episode>/bag/*.mcap without its summary, footer and
metadata.yaml; rosbags cannot open that. `scan_mcap` reads such a file record by record (MCAP:
magic, then records of <opcode u8><length u64><content>; schemas, channels and messages either at
the top level or inside zstd / lz4 / uncompressed chunks) and stops at the first record that is
cut off or does not parse. Of a chunk cut off by the end of the file it keeps the messages whose
records decompress completely. `repair_episode` writes what was recovered into a new bag with the
rosbags Writer (same topics, types, stamps and bytes), checks that bag reads back, and only then
puts it in place of the original (moved aside to <episode>/bag.truncated/ meanwhile, deleted once
the new bag is verified unless asked to keep it). An episode without episode.json gets one with
outcome `interrupted` and `repaired: true`.

Every step can itself be interrupted: the next repair starts over from the originals.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

MAGIC = b'\x89MCAP0\r\n'
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x02, 0x03, 0x04, \
    0x05, 0x06
OP_DATA_END = 0x0F
_CHUNK_RECORDS = (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE)  # what a chunk may hold
ASIDE = 'bag.truncated'   # originals while (and, on request, after) a repair
STAGING = '.repair'       # the new bag until it is verified (hidden: list_episodes skips it)


class RecordError(ValueError):
    """A record that does not parse (cut off or corrupt)."""


class _Fields:
    """Little-endian MCAP fields read from one record's content."""

    def __init__(self, data, pos: int = 0):
        self.data, self.pos = memoryview(data), pos

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise RecordError('field runs past its record')
        start, self.pos = self.pos, self.pos + size
        return self.data[start:self.pos]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), 'little')

    def string(self) -> str:
        try:
            return str(self.take(self.uint(4)), 'utf-8')
        except UnicodeDecodeError:
            raise RecordError('string is not UTF-8') from None

    def sized(self, size_bytes: int) -> memoryview:
        return self.take(self.uint(size_bytes))


@dataclass(frozen=True)
class Schema:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class Channel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str


@dataclass(frozen=True)
class Message:
    channel_id: int
    log_time: int
    data: bytes


def _parse(op: int, content) -> object:
    f = _Fields(content)
    if op == OP_SCHEMA:
        record = Schema(f.uint(2), f.string(), f.string(), bytes(f.sized(4)))
    elif op == OP_CHANNEL:
        record = Channel(f.uint(2), f.uint(2), f.string(), f.string())
        f.sized(4)  # metadata map (rosbag2: offered QoS profiles)
    elif op == OP_MESSAGE:
        channel_id = f.uint(2)
        f.uint(4)  # sequence
        log_time = f.uint(8)
        f.uint(8)  # publish time
        return Message(channel_id, log_time, bytes(f.take(len(f.data) - f.pos)))
    else:
        raise RecordError(f'opcode 0x{op:02x} is not allowed here')
    if f.pos != len(f.data):
        raise RecordError(f'record 0x{op:02x} has {len(f.data) - f.pos} bytes left over')
    return record


def _split_records(data, complete: bool) -> Tuple[List[object], Optional[str]]:
    """Schema/Channel/Message records of a chunk's (decompressed) records field. With
    `complete` False (a prefix of it) a last record that is cut off is dropped silently; any
    other flaw rejects the whole chunk."""
    records, pos, view = [], 0, memoryview(data)
    while pos < len(view):
        if len(view) - pos < 9:
            if complete:
                return [], 'chunk ends inside a record header'
            break
        op, length = view[pos], int.from_bytes(view[pos + 1:pos + 9], 'little')
        if op not in _CHUNK_RECORDS:
            return [], f'opcode 0x{op:02x} inside a chunk'
        if pos + 9 + length > len(view):
            if complete:
                return [], 'a record runs past its chunk'
            break
        try:
            records.append(_parse(op, view[pos + 9:pos + 9 + length]))
        except RecordError as exc:
            return [], str(exc)
        pos += 9 + length
    return records, None


def _decompress(compression: str, data, expected: Optional[int]) -> bytes:
    """The chunk's records field; with `expected` None, as much as a cut-off field gives."""
    if compression == '':
        return bytes(data)
    if compression == 'zstd':
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # rosbags' own dependency below 3.14
        decompressor = zstd.ZstdDecompressor()
        error = zstd.ZstdError
    elif compression == 'lz4':
        import lz4.frame
        decompressor = lz4.frame.LZ4FrameDecompressor()
        error = RuntimeError
    else:
        raise RecordError(f'unsupported chunk compression {compression!r}')
    try:
        out = decompressor.decompress(bytes(data))
    except error as exc:
        if expected is not None:
            raise RecordError(f'{compression} data does not decompress ({exc})') from None
        return b''
    return out


def _chunk_records(content, complete: bool) -> Tuple[List[object], Optional[str]]:
    f = _Fields(content)
    try:
        f.uint(8), f.uint(8)  # message start / end time
        uncompressed_size, crc, compression = f.uint(8), f.uint(4), f.string()
        size = f.uint(8)
        available = min(size, len(f.data) - f.pos)
        if complete and available != size:
            raise RecordError('chunk data runs past its record')
        raw = _decompress(compression, f.take(available), uncompressed_size if complete else None)
    except RecordError as exc:
        return [], str(exc)
    if complete:
        if len(raw) != uncompressed_size:
            return [], f'chunk decompresses to {len(raw)} bytes, not {uncompressed_size}'
        if crc and zlib.crc32(raw) != crc:
            return [], 'chunk CRC mismatch'
    return _split_records(raw[:uncompressed_size], complete)


@dataclass
class Scan:
    """What `scan_mcap` recovered of one file, in file order."""
    schemas: Dict[int, Schema] = field(default_factory=dict)
    channels: Dict[int, Channel] = field(default_factory=dict)
    messages: List[Message] = field(default_factory=list)
    complete: bool = False       # reached the end of the data section (or a footer)
    stopped: str = ''            # why reading stopped before that
    partial_chunk_messages: int = 0  # of `messages`, from a chunk the end of the file cut off

    def add(self, records: List[object]) -> Optional[str]:
        """Records in file order; a message on an unknown channel ends the scan (corrupt)."""
        for record in records:
            if isinstance(record, Schema):
                self.schemas[record.id] = record
            elif isinstance(record, Channel):
                self.channels[record.id] = record
            elif record.channel_id in self.channels:
                self.messages.append(record)
            else:
                return f'message on unknown channel {record.channel_id}'
        return None


def scan_mcap(path) -> Scan:
    """Schemas, channels and messages of an MCAP file up to its first cut-off or corrupt
    record. Never raises for the file's content (only for I/O errors)."""
    scan = Scan()
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MAGIC)) != MAGIC:
            scan.stopped = 'not an MCAP file (no magic bytes)'
            return scan
        while True:
            offset = f.tell()
            # never past the size seen at the start: a live recording grows while it is read
            head = f.read(min(9, max(0, size - offset)))
            if not head:
                scan.stopped = f'file ends after {offset} bytes without a summary (killed writer)'
                return scan
            if len(head) < 9:
                scan.stopped = f'record header cut off at byte {offset}'
                return scan
            op, length = head[0], int.from_bytes(head[1:], 'little')
            if op == 0:
                scan.stopped = f'invalid opcode 0 at byte {offset} (corrupt)'
                return scan
            cut = offset + 9 + length > size
            if cut and op != OP_CHUNK:
                scan.stopped = f'record 0x{op:02x} at byte {offset} cut off by the end of the file'
                return scan
            if op in (OP_DATA_END, OP_FOOTER):
                scan.complete = True
                return scan
            if op not in (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK):
                f.seek(length, os.SEEK_CUR)  # header, indexes, attachments, metadata...
                continue
            content = f.read(min(length, size - offset - 9))
            if op == OP_CHUNK:
                records, error = _chunk_records(content, complete=not cut)
            else:
                try:
                    records, error = [_parse(op, content)], None
                except RecordError as exc:
                    records, error = [], str(exc)
            if error:
                scan.stopped = f'record 0x{op:02x} at byte {offset}: {error}'
                return scan
            before = len(scan.messages)
            error = scan.add(records)
            if error:
                scan.stopped = f'record 0x{op:02x} at byte {offset}: {error}'
                return scan
            if cut:
                scan.partial_chunk_messages = len(scan.messages) - before
                scan.stopped = (f'chunk at byte {offset} cut off by the end of the file: '
                                f'{scan.partial_chunk_messages} of its messages recovered')
                return scan


# --- episodes ------------------------------------------------------------------------------------

@dataclass
class RepairResult:
    episode: Path
    status: str                  # 'ok' (readable), 'repaired', 'busy' (being written), 'failed'
    counts: Dict[str, int] = field(default_factory=dict)   # topic -> messages recovered
    reason: str = ''

    def line(self) -> str:
        name = self.episode.name
        if self.status == 'ok':
            return f'{name}: readable, nothing to repair'
        if self.status == 'busy':
            return f'{name}: skipped, {self.reason}'
        if self.status == 'failed':
            return f'{name}: could not repair: {self.reason}'
        topics = ', '.join(f'{t} {n}' for t, n in sorted(self.counts.items())) or 'none'
        return (f'{name}: repaired, {sum(self.counts.values())} messages recovered ({topics}); '
                f'{self.reason}')


def episode_dirs(root) -> List[Path]:
    """Episode directories under `root` (a run, an episodes/ folder, one episode or its bag/),
    readable or not: those with a bag/ folder or originals set aside by a repair."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f'{root} does not exist')
    if root.name == 'bag' and (root.parent / 'bag').is_dir():
        return [root.parent]
    if (root / 'bag').is_dir() or (root / ASIDE).is_dir():
        return [root]
    found = {p.parent for name in ('bag', ASIDE) for p in root.glob(f'**/{name}') if p.is_dir()}
    return sorted(p for p in found
                  if not any(part.startswith('.') for part in p.relative_to(root).parts))


def needs_repair(episode: Path) -> bool:
    """A bag without metadata.yaml (the writer never closed it) or a repair left unfinished."""
    episode = Path(episode)
    return (episode / STAGING).exists() or not (episode / 'bag' / 'metadata.yaml').is_file()


def _readable(bag: Path) -> Tuple[Optional[Dict[str, int]], str]:
    """(topic -> messages read, '') when rosbags reads every message of `bag`, else (None, why)."""
    from hilserl.data.bags import _reader
    if not (bag / 'metadata.yaml').is_file():
        return None, 'metadata.yaml missing'
    counts: Dict[str, int] = {}
    try:
        with _reader(bag) as reader:
            for connection, _, _ in reader.messages():
                topic = connection.topic.lstrip('/')
                counts[topic] = counts.get(topic, 0) + 1
    except (ValueError, OSError, KeyError) as exc:
        return None, str(exc)
    return counts, ''


def _connection_args(store, msgtype: str, schema: Optional[Schema]) -> dict:
    """rosbags Writer.add_connection arguments: the type store's definition, else the one the
    file carried (a type from elsewhere)."""
    if msgtype in store.types:
        return {'typestore': store}
    if schema is None or schema.encoding != 'ros2msg':
        raise ValueError(f'type {msgtype} is unknown and the file has no ros2msg schema for it')
    from rosbags.typesys import get_types_from_msg
    types = get_types_from_msg(schema.data.decode(), msgtype)
    store.register({name: t for name, t in types.items() if name not in store.types})
    return {'typestore': store}


def _write_bag(bag_dir: Path, scans: List[Scan]) -> Dict[str, int]:
    """The recovered messages as a new rosbag2 (MCAP, zstd chunks); topic -> messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.writer import CompressionFormat, CompressionMode

    from hilserl.data.bags import typestore
    store = typestore()
    writer = Writer(bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    connections, counts = {}, {}
    try:
        for scan in scans:
            for message in scan.messages:
                channel = scan.channels[message.channel_id]
                schema = scan.schemas.get(channel.schema_id)
                msgtype = schema.name if schema else ''
                key = (channel.topic, msgtype)
                if key not in connections:
                    connections[key] = writer.add_connection(
                        channel.topic, msgtype, serialization_format=channel.message_encoding,
                        **_connection_args(store, msgtype, schema))
                writer.write(connections[key], message.log_time, message.data)
                topic = channel.topic.lstrip('/')
                counts[topic] = counts.get(topic, 0) + 1
    finally:
        writer.close()
    return counts


def _originals(episode: Path) -> List[Path]:
    """The files to repair from: those set aside by an unfinished repair, else the bag's."""
    aside = sorted((episode / ASIDE).glob('*.mcap'))
    return aside or sorted((episode / 'bag').glob('*.mcap'))


def _try_lock(paths: List[Path]):
    """Open files holding a non-blocking exclusive flock on each path, or None when a live
    writer (hilserl.data.bags.EpisodeWriter) holds one."""
    try:
        import fcntl
    except ImportError:
        return []
    handles = []
    for path in paths:
        handle = open(path, 'rb')  # noqa: SIM115 - closed by the caller
        handles.append(handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            for h in handles:
                h.close()
            return None
    return handles


def repair_episode(episode, keep_original: bool = False, check: bool = True) -> RepairResult:
    """Make one episode's bag readable. With `check`, a bag that has metadata.yaml is read
    through first and left alone when every message reads; without, only bags that need it
    (`needs_repair`) are touched."""
    episode = Path(episode)
    bag = episode / 'bag'
    if not needs_repair(episode):
        if not check:
            return RepairResult(episode, 'ok')
        counts, _ = _readable(bag)
        if counts is not None:
            return RepairResult(episode, 'ok', counts)
    originals = _originals(episode)
    if not originals:
        return RepairResult(episode, 'failed', reason=f'no .mcap file in {bag}')
    try:
        locks = _try_lock(originals)
    except OSError as exc:
        return RepairResult(episode, 'failed', reason=str(exc))
    if locks is None:
        return RepairResult(episode, 'busy', reason='a running recorder is writing it')
    try:
        return _repair(episode, originals, keep_original)
    except OSError as exc:  # read-only or full disk: the next attempt starts over
        return RepairResult(episode, 'failed', reason=str(exc))
    finally:
        for handle in locks:
            handle.close()


def _repair(episode: Path, originals: List[Path], keep_original: bool) -> RepairResult:
    bag, aside, staging = episode / 'bag', episode / ASIDE, episode / STAGING
    scans = [scan_mcap(path) for path in originals]
    notes = [s.stopped for s in scans if s.stopped] or ['file complete']
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        counts = _write_bag(staging / 'bag', scans)
    except (ValueError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return RepairResult(episode, 'failed', reason=f'writing the new bag: {exc}')
    read, why = _readable(staging / 'bag')
    if read != counts:
        shutil.rmtree(staging, ignore_errors=True)
        return RepairResult(episode, 'failed', counts,
                            f'the new bag does not read back ({why or read})')
    # swap: originals aside first, the verified bag in (metadata.yaml last), then clean up
    aside.mkdir(exist_ok=True)
    for path in originals:
        if path.parent != aside:
            os.replace(path, aside / path.name)
    bag.mkdir(exist_ok=True)
    for stale in bag.iterdir():  # an old metadata.yaml, a half-moved earlier repair
        if stale.is_file():
            stale.unlink()
    new_files = sorted((staging / 'bag').iterdir(), key=lambda p: p.name == 'metadata.yaml')
    for path in new_files:
        os.replace(path, bag / path.name)
    shutil.rmtree(staging, ignore_errors=True)
    _write_episode_json(episode, counts, notes)
    if not keep_original:
        shutil.rmtree(aside, ignore_errors=True)
    note = '; '.join(notes) + (f'; original kept in {aside}' if keep_original else '')
    return RepairResult(episode, 'repaired', counts, note)


def _write_episode_json(episode: Path, counts: Dict[str, int], notes: List[str]) -> None:
    from hilserl.data.bags import write_json_atomic
    path = episode / 'episode.json'
    repair = {'repaired': True, 'repair_note': '; '.join(notes),
              'recovered_messages': sum(counts.values())}
    try:
        metadata = json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        metadata = {'outcome': 'interrupted', 'counts': dict(counts)}
        index = episode.name.split('_')
        if len(index) > 1 and index[1].isdigit():
            metadata['episode'] = int(index[1])
    write_json_atomic(path, {**metadata, **repair})


def repair_episodes(root, keep_original: bool = False, check: bool = True,
                    log: Optional[Callable[[str], None]] = None) -> List[RepairResult]:
    """`repair_episode` for every episode under `root`; `log` gets one line per episode that
    was not fine already."""
    results = []
    for episode in episode_dirs(root):
        result = repair_episode(episode, keep_original=keep_original, check=check)
        results.append(result)
        if log is not None and result.status != 'ok':
            log(result.line())
    return results


def repair_killed_episodes(episodes_root, log: Callable[[str], None]) -> List[RepairResult]:
    """At a recorder's start: repair the episodes a killed one left (no metadata.yaml). Quiet
    when there is nothing to do or the folder does not exist yet."""
    if not Path(episodes_root).is_dir():
        return []
    return repair_episodes(episodes_root, check=False, log=log)
