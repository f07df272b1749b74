"""A killed recorder loses nothing it had flushed: its cut-off .mcap is read record by record and
rewritten as a readable bag (`hilserl bag-repair`, and on the recorder's next start)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hilserl_tools import cli
from hilserl.data.bag_repair import ASIDE, repair_episode, repair_killed_episodes, scan_mcap
from hilserl.data.bags import (CHUNK_AGE_S, CHUNK_BYTES, EpisodeWriter, MessageFactory,
                               iter_raw_messages, list_episodes, read_episode)
from hilserl.messages.conventions import Topics

_MAGIC_AND_HEADER = 8


def _top_level_records(data: bytes):
    """(opcode, start, end) of each top-level MCAP record (the test's own minimal walk)."""
    pos, records = _MAGIC_AND_HEADER, []
    while pos + 9 <= len(data):
        op, length = data[pos], int.from_bytes(data[pos + 1:pos + 9], 'little')
        records.append((op, pos, pos + 9 + length))
        pos += 9 + length
    return records


def _write_episode(path: Path, count: int = 120, chunk_bytes: int = 24 * 1024,
                   compress: bool = True):
    """An episode whose messages are told apart by their bytes; returns (written messages in
    order as (topic, stamp, bytes), [(file size, messages written so far)] after each flush)."""
    rng = np.random.default_rng(7)
    factory = MessageFactory()
    writer = EpisodeWriter(path, chunk_bytes=chunk_bytes, chunk_age_s=1e9, compress=compress)
    store = writer.store
    mcap = next((path / 'bag').glob('*.mcap'))
    written, flushed = [], []
    for i in range(count):
        stamp = 1_000_000_000 + i * 50_000_000
        smooth = np.full((24, 24, 3), i % 256, np.uint8)  # compresses well
        noisy = rng.integers(0, 255, 3000 + 37 * i, dtype=np.uint8).tobytes()  # does not
        for topic, msg in ((Topics.IMAGE_CROP, factory.image(smooth, stamp, 'cam')),
                           (Topics.TRANSITIONS, factory.bytes_array(noisy)),
                           (Topics.REWARD, factory.float32(i * 0.5))):
            if topic == Topics.REWARD and i % 3:
                continue
            data = store.serialize_cdr(msg, writer.topics[topic])
            size = mcap.stat().st_size
            writer.write_cdr(topic, data, stamp)
            written.append(('/' + topic, stamp, bytes(data)))
            if mcap.stat().st_size != size:
                flushed.append((mcap.stat().st_size, len(written)))
    writer.close({'outcome': 'success'})
    return written, flushed


def _scanned(mcap: Path):
    """((topic, stamp, bytes) of what scan_mcap recovers, why it stopped)."""
    scan = scan_mcap(mcap)
    return [(scan.channels[m.channel_id].topic, m.log_time, m.data) for m in scan.messages], \
        scan.stopped


def _read_all(episode: Path):
    """(topic, stamp, stored bytes) of every message rosbags reads from the episode's bag."""
    return [('/' + topic, stamp, bytes(raw)) for topic, _, stamp, raw in iter_raw_messages(episode)]


def test_every_flushed_message_survives_any_cut(tmp_path):
    written, flushed = _write_episode(tmp_path / 'whole')
    data = next((tmp_path / 'whole' / 'bag').glob('*.mcap')).read_bytes()
    assert len(flushed) >= 5, 'the episode should span several chunks'
    records = _top_level_records(data)
    chunk_ends = [end for op, _, end in records if op == 0x06]
    cuts = {0, 5, 8, 20, len(data) - 1, len(data)}
    for op, start, end in records[:9]:  # the first chunks, their message indexes
        cuts.update({start + 1, start + 9, (start + end) // 2, end - 1, end})
    cuts.update(int(c) for c in np.random.default_rng(1).integers(0, len(data), 15))
    for cut in sorted(cuts):
        episode = tmp_path / f'episode_{cut:07d}'
        (episode / 'bag').mkdir(parents=True)
        (episode / 'bag' / 'bag.mcap').write_bytes(data[:cut])
        result = repair_episode(episode)
        assert result.status == 'repaired', (cut, result.reason)
        recovered = _read_all(episode)
        # messages of every chunk that is whole in the cut file come back
        whole_chunks = sum(end <= cut for end in chunk_ends)
        required = max([n for size, n in flushed if size <= cut] + [0])
        if whole_chunks == len(chunk_ends):
            required = len(written)
        assert len(recovered) >= required, (cut, len(recovered), required)
        # ... and nothing else: exactly the first messages written, same topic, stamp, bytes
        assert sorted(recovered) == sorted(written[:len(recovered)]), cut
        assert sum(result.counts.values()) == len(recovered)
        meta = json.loads((episode / 'episode.json').read_text())
        assert meta['outcome'] == 'interrupted' and meta['repaired'] is True
        assert meta['recovered_messages'] == len(recovered)
        assert not (episode / ASIDE).exists() and not (episode / '.repair').exists()
        shutil.rmtree(episode)


def test_uncompressed_chunks_cut_anywhere(tmp_path):
    written, flushed = _write_episode(tmp_path / 'whole', count=20, compress=False)
    data = next((tmp_path / 'whole' / 'bag').glob('*.mcap')).read_bytes()
    for cut in np.linspace(100, len(data), 12).astype(int):
        path = tmp_path / 'cut.mcap'
        path.write_bytes(data[:cut])
        recovered, _ = _scanned(path)
        required = max([n for size, n in flushed if size <= cut] + [0])
        assert recovered == written[:len(recovered)] and len(recovered) >= required


def test_the_writer_flushes_by_age_and_size_and_repair_leaves_a_live_bag_alone(tmp_path):
    now = [0.0]
    writer = EpisodeWriter(tmp_path / 'episode_000000', clock=lambda: now[0])
    assert writer.can_flush, 'rosbags McapWriter internals changed: chunks are not bounded'
    mcap = next((tmp_path / 'episode_000000' / 'bag').glob('*.mcap'))
    factory = MessageFactory()
    writer.write(Topics.REWARD, factory.float32(1.0), 5)
    empty = mcap.stat().st_size
    assert not writer.flush_if_due()
    now[0] = CHUNK_AGE_S  # a second later (a timer calls flush_if_due): on disk
    assert writer.flush_if_due() and mcap.stat().st_size > empty
    assert len(scan_mcap(mcap).messages) == 1
    before = mcap.stat().st_size
    payload = bytes(CHUNK_BYTES)  # big enough on its own
    writer.write(Topics.TRANSITIONS, factory.bytes_array(payload), 6)
    assert mcap.stat().st_size > before and len(scan_mcap(mcap).messages) == 2
    # the writer is alive: neither the CLI nor a recorder's start touches its bag
    result = repair_episode(tmp_path / 'episode_000000')
    assert result.status == 'busy' and not (tmp_path / 'episode_000000' / ASIDE).exists()
    writer.close({'outcome': 'success'})
    assert repair_episode(tmp_path / 'episode_000000').status == 'ok'


def test_bag_repair_command(tmp_path, capsys):
    run = tmp_path / 'run'
    written, flushed = _write_episode(run / 'episodes' / 'episode_000000', count=30)
    _write_episode(run / 'episodes' / 'episode_000001', count=30)
    killed = run / 'episodes' / 'episode_000001'
    (killed / 'episode.json').unlink()
    (killed / 'bag' / 'metadata.yaml').unlink()
    mcap = next((killed / 'bag').glob('*.mcap'))
    cut_data = mcap.read_bytes()[:flushed[1][0] + 100]
    mcap.write_bytes(cut_data)
    assert list_episodes(run) == [run / 'episodes' / 'episode_000000']

    assert cli.main(['bag-repair', str(run), '--keep-original']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0] == 'episode_000000: readable, nothing to repair'
    assert lines[1].startswith(f'episode_000001: repaired, {flushed[1][1]} messages recovered ')
    assert 'gripper_cam/image_crop' in lines[1] and 'transitions' in lines[1]
    assert (killed / ASIDE / mcap.name).read_bytes() == cut_data  # kept as it was
    assert len(list_episodes(run)) == 2
    assert json.loads((killed / 'episode.json').read_text())['outcome'] == 'interrupted'

    assert cli.main(['bag-repair', str(killed)]) == 0  # repaired stays repaired
    assert 'readable, nothing to repair' in capsys.readouterr().out

    for bad in (tmp_path / 'missing', tmp_path / 'empty'):
        (tmp_path / 'empty').mkdir(exist_ok=True)
        assert cli.main(['bag-repair', str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('hilserl bag-repair: ') and str(bad) in err and '\n' not in err


def test_junk_is_refused_not_returned(tmp_path):
    episode = tmp_path / 'episode_000000'
    (episode / 'bag').mkdir(parents=True)
    (episode / 'bag' / 'bag.mcap').write_bytes(os.urandom(5000))
    result = repair_episode(episode)
    assert result.status == 'repaired' and result.counts == {}
    assert 'not an MCAP file' in result.reason
    written, flushed = _write_episode(tmp_path / 'whole', count=20)
    data = next((tmp_path / 'whole' / 'bag').glob('*.mcap')).read_bytes()
    rng = np.random.default_rng(3)
    for size, count in flushed:  # random bytes where the next record should start
        for _ in range(5):
            path = tmp_path / 'junk.mcap'
            path.write_bytes(data[:size] + rng.integers(0, 255, 3000, np.uint8).tobytes())
            recovered, stopped = _scanned(path)
            assert recovered == written[:count] and stopped


def test_a_recorder_starting_on_the_run_repairs_it(tmp_path, ros_context):
    from rclpy.parameter import Parameter

    from hilserl_tools.recorder_node import RecorderNode
    run = tmp_path / 'run'
    written, flushed = _write_episode(run / 'episodes' / 'episode_000003', count=30)
    killed = run / 'episodes' / 'episode_000003'
    (killed / 'episode.json').unlink()
    (killed / 'bag' / 'metadata.yaml').unlink()
    mcap = next((killed / 'bag').glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:flushed[0][0]])
    node = RecorderNode(context=ros_context, parameter_overrides=[
        Parameter('run_dir', Parameter.Type.STRING, str(run))])
    node.destroy_node()
    assert list_episodes(run) == [killed]
    assert sorted(_read_all(killed)) == sorted(written[:flushed[0][1]])
    assert repair_killed_episodes(run / 'episodes', log=print)[0].status == 'ok'


# --- a real recorder process, SIGKILLed ----------------------------------------------------------

def _wait(predicate, timeout_s: float, what: str, proc=None, log: Path = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    output = log.read_text()[-3000:] if log is not None and log.exists() else ''
    pytest.fail(f'{what} within {timeout_s} s\n{output}')


def test_sigkilled_recorder_loses_nothing_it_flushed(tmp_path, capsys):
    rclpy = pytest.importorskip('rclpy')
    from std_msgs.msg import String, UInt8MultiArray

    from conftest import free_domain_id
    from hilserl.ros.node import qos_profile
    domain = free_domain_id()
    run, log = tmp_path / 'run', tmp_path / 'recorder.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'hilserl_tools.recorder_node', '--ros-args', '-p',
             f'run_dir:={run}'], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, 'ROS_DOMAIN_ID': str(domain), 'PYTHONUNBUFFERED': '1'})
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node('killer', context=context)
        events = node.create_publisher(String, Topics.EPISODE_EVENTS,
                                       qos_profile(Topics.EPISODE_EVENTS))
        transitions = node.create_publisher(UInt8MultiArray, Topics.TRANSITIONS,
                                            qos_profile(Topics.TRANSITIONS))
        _wait(lambda: events.get_subscription_count() and transitions.get_subscription_count(),
              60, 'the recorder did not subscribe', proc, log)
        events.publish(String(data=json.dumps({'event': 'start', 'episode': 0})))
        episode = run / 'episodes' / 'episode_000000'
        _wait(lambda: list(episode.glob('bag/*.mcap')), 60, 'no episode bag opened', proc, log)
        mcap = next(episode.glob('bag/*.mcap'))
        rng = np.random.default_rng(0)
        payloads = [bytes([i]) + rng.integers(0, 255, 40_000, dtype=np.uint8).tobytes()
                    for i in range(20)]  # about three chunks by size, the rest by age
        for i, payload in enumerate(payloads):
            transitions.publish(UInt8MultiArray(data=payload))
            if i == 9:  # the file grows past one chunk while the episode goes on
                _wait(lambda: mcap.stat().st_size > CHUNK_BYTES // 2, 60,
                      'no chunk reached the file', proc, log)

        def all_flushed():
            recovered, _ = _scanned(mcap)
            return sum(topic == '/transitions' for topic, _, _ in recovered) == len(payloads)
        _wait(all_flushed, 60, 'the recorder did not flush every transition', proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rclpy.try_shutdown(context=context)

    assert not (episode / 'bag' / 'metadata.yaml').exists()
    with pytest.raises(FileNotFoundError):
        read_episode(episode)
    capsys.readouterr()
    assert cli.main(['bag-repair', str(run)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith('episode_000000: repaired, ') and 'transitions 20' in line, line
    recovered = read_episode(episode, [Topics.TRANSITIONS, Topics.EPISODE_EVENTS])
    data = [np.asarray(m.data, np.uint8).tobytes()
            for _, m in recovered.messages[Topics.TRANSITIONS]]
    assert data == payloads
    assert json.loads(recovered.messages[Topics.EPISODE_EVENTS][0][1].data)['event'] == 'start'
    assert recovered.metadata['outcome'] == 'interrupted' and recovered.metadata['repaired']
