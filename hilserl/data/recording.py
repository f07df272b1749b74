"""Episode recording without ROS: one bag per episode, opened on the actor's `start` event and
closed (with episode.json) shortly after its `end` event, so late messages of the episode land.

Messages between episodes (resets) are not recorded, except a short pre-roll: messages that
arrived up to `preroll_ns` before the `start` event are written when it comes, because topics
are delivered independently and an episode's first messages may be handled before its `start`.
Ctrl-C closes the open bag cleanly; after a SIGKILL, the chunks already written (at most about a
second or 256 kB behind, hilserl.data.bags.CHUNK_AGE_S / CHUNK_BYTES) are restored on the next start
(hilserl.data.bag_repair). Bag stamps are the graph's time (simulated with the sim backend); the
close delay is wall time, because late messages are late in wall time and a stopped simulated
clock must not keep a finished episode's bag open.

With `sim_clock` every message is filed under its tick (header stamps; the recorder node takes
care of that) and events carry theirs (`stamp_ns`): an episode holds exactly the ticks from its
`start` to its `end` event, whatever order the topics arrive in (no frames of the reset before
it, none of the next reset after it). An ended episode's bag stays open beside the next one
until the driver's and camera's ticks have passed its end: a busy recorder takes one message
per topic in turn, so the next `start` can come before the last ticks of the episode before.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from hilserl.data.bags import EPISODE_TOPICS, EpisodeWriter
from hilserl.messages.conventions import Topics, is_camera_view
from hilserl.messages.conversions import event_from_json


SIM_PREROLL_WINDOW_NS = 10_000_000_000
# On the simulated clock the next tick's state may arrive before the actor's `end` event (other
# topics, no order between them): the newest second of ticks waits in memory until an `end`
# says whether it belongs to the episode.
SIM_HOLD_NS = 1_000_000_000
# Published on every tick of the simulated clock (driver, cameras): once all have passed an
# ended episode's last tick, nothing more of it is on its way from them.
EVERY_TICK_TOPICS = (Topics.JOINT_STATES, Topics.IMAGE_CROP)


def every_tick(topic: str) -> bool:
    """The driver's joint states and every camera's policy view."""
    return topic in EVERY_TICK_TOPICS or is_camera_view(topic)


@dataclass
class EndedEpisode:
    """Simulated clock: an episode whose `end` came, open for its ticks still on their way."""
    writer: EpisodeWriter
    metadata: dict
    start_ns: int
    end_ns: int
    close_at_ns: int

    def holds(self, stamp_ns: int) -> bool:
        return self.start_ns <= stamp_ns <= self.end_ns


class EpisodeRecorder:
    def __init__(self, run_dir, topics: Optional[Dict[str, str]] = None,
                 close_delay_ns: int = 500_000_000, preroll_ns: int = 300_000_000,
                 late_limit_ns: int = 10_000_000_000, compress: bool = True,
                 extra_metadata: Optional[dict] = None,
                 log: Callable[[str], None] = lambda text: None,
                 wall_clock_ns: Callable[[], int] = time.monotonic_ns,
                 sim_clock: bool = False):
        self.root = Path(run_dir) / 'episodes'
        self.topics = dict(EPISODE_TOPICS if topics is None else topics)
        self.close_delay_ns = close_delay_ns
        self.late_limit_ns = late_limit_ns  # wall: longest wait for an episode's transitions
        self.sim_clock = sim_clock
        self.preroll_ns = preroll_ns
        # Held back while no bag is open: on the simulated clock an episode takes exactly the
        # ticks from its `start` on, but that event may be delivered after several of them (a
        # reliable topic's retransmission under load), so keep a few seconds of ticks.
        self.preroll_window_ns = SIM_PREROLL_WINDOW_NS if sim_clock else preroll_ns
        self.start_stamp_ns: Optional[int] = None
        self.end_stamp_ns: Optional[int] = None
        self._preroll = deque()   # (topic, data, stamp_ns) received while no bag is open
        self._held = deque()      # sim clock: (topic, data, stamp_ns) of the newest ticks
        self._newest_stamp_ns = 0
        self._newest_tick_by_topic: Dict[str, int] = {}
        self._ended: List[EndedEpisode] = []  # sim clock: ended, waiting for their last ticks
        self.compress = compress
        self.extra = dict(extra_metadata or {})
        self.log = log
        self.wall_clock_ns = wall_clock_ns
        self.writer: Optional[EpisodeWriter] = None
        self.pending_metadata: Optional[dict] = None
        self.close_at_ns: Optional[int] = None
        self.episodes_written = 0
        self.dropped = 0            # messages outside an episode or unparseable events
        self.missing_transitions = 0  # announced by an `end` event but never received

    def _episode_dir(self, index: int) -> Path:
        path = self.root / f'episode_{index:06d}'
        suffix = 0
        while path.exists():  # a resumed run may reuse an index: never overwrite a bag
            suffix += 1
            path = self.root / f'episode_{index:06d}_{suffix}'
        return path

    def on_event(self, text: str, now_ns: int) -> None:
        event = event_from_json(text)
        kind = None if event is None else event.get('event')
        if event is None or kind == 'start' and type(event.get('episode', 0)) is not int:
            self.dropped += 1  # not an actor's event
            return
        if self.sim_clock and isinstance(event.get('stamp_ns'), int):
            now_ns = event['stamp_ns']
        if kind == 'start':
            if self.sim_clock and self.pending_metadata is not None:
                self._set_aside_ended()
            self._close_current()  # a start without an end (actor restarted): close the old one
            self.start_stamp_ns = now_ns
            self.writer = EpisodeWriter(self._episode_dir(int(event.get('episode', 0))),
                                        self.topics, compress=self.compress)
            self.log(f'recording {self.writer.dir}')
            first_ns = now_ns if self.sim_clock else now_ns - self.preroll_ns
            preroll, self._preroll = self._preroll, deque()
            for topic, data, stamp in preroll:
                if stamp >= first_ns:
                    self._write(topic, data, stamp)
                else:
                    self.dropped += 1  # the reset before this episode
        if self.writer is not None:
            self.on_message(Topics.EPISODE_EVENTS, text, now_ns, serialized=False)
        if kind == 'end' and self.writer is not None:
            self.pending_metadata = {**self.extra, **event}
            self.close_at_ns = self.wall_clock_ns() + self.close_delay_ns
            self.end_stamp_ns = now_ns
            self._release_held(now_ns)
            for topic, data, stamp in self._held:  # the next episode's first tick (or reset's)
                self._keep_for_preroll(topic, data, stamp, True)
            self._held.clear()

    def on_message(self, topic: str, data, stamp_ns: int, serialized: bool = True,
                   ticked: bool = True) -> None:
        """`ticked`: the stamp is the message's own (header or layout: its tick); False for
        types without one (Bool, Float32, String), filed at the time they were received."""
        if self.sim_clock:
            if ticked and every_tick(topic):
                self._newest_tick_by_topic[topic] = max(
                    stamp_ns, self._newest_tick_by_topic.get(topic, stamp_ns))
            ended = next((e for e in self._ended if e.holds(stamp_ns)), None)
            if ended is not None:  # a late tick of an episode that has ended
                if serialized:
                    ended.writer.write_cdr(topic, data, stamp_ns)
                return
        if self.sim_clock and self.writer is not None:
            if self.end_stamp_ns is not None and stamp_ns > self.end_stamp_ns:
                self._keep_for_preroll(topic, data, stamp_ns, serialized)  # the next tick's
                return
            if stamp_ns < self.start_stamp_ns:  # a late message of the reset before
                self.dropped += 1
                return
        if self.writer is None:
            self._keep_for_preroll(topic, data, stamp_ns, serialized)
            return
        if serialized and not ticked:
            # No tick of its own: the time it arrived may be later than its tick under load, so
            # it cannot say which episode it belongs to better than its arrival before `end`.
            self.writer.write_cdr(topic, data, stamp_ns)
        elif serialized:
            self._write(topic, data, stamp_ns)
        else:
            self.writer.write(topic, self.writer.store.types['std_msgs/msg/String'](data=data),
                              stamp_ns)

    def _write(self, topic: str, data, stamp_ns: int) -> None:
        """Into the open bag; on the simulated clock through the hold (until an `end` event or
        a second of newer ticks shows the message is the episode's)."""
        if not self.sim_clock or self.end_stamp_ns is not None:
            self.writer.write_cdr(topic, data, stamp_ns)
            return
        self._held.append((topic, bytes(data), stamp_ns))
        if stamp_ns > self._newest_stamp_ns:  # once per new tick, not per message
            self._newest_stamp_ns = stamp_ns
            self._release_held(stamp_ns - SIM_HOLD_NS)

    def _release_held(self, up_to_ns: int) -> None:
        kept = deque()
        for topic, data, stamp in self._held:
            if stamp <= up_to_ns:
                self.writer.write_cdr(topic, data, stamp)
            else:
                kept.append((topic, data, stamp))
        self._held = kept

    def _keep_for_preroll(self, topic: str, data, stamp_ns: int, serialized: bool) -> None:
        if not serialized:
            self.dropped += 1
            return
        self._preroll.append((topic, bytes(data), stamp_ns))
        while self._preroll and self._preroll[0][2] < stamp_ns - self.preroll_window_ns:
            self._preroll.popleft()
            self.dropped += 1

    def _transitions_owed(self, writer: Optional[EpisodeWriter], metadata: Optional[dict]) -> int:
        expected = (metadata or {}).get('transitions')
        if not isinstance(expected, int) or writer is None or \
                Topics.TRANSITIONS not in self.topics:  # not recorded: none to wait for
            return 0
        return max(0, expected - writer.counts.get(Topics.TRANSITIONS, 0))

    def _ticks_owed(self, writer: EpisodeWriter, end_ns: Optional[int]) -> bool:
        """Sim clock: the driver's or camera's ticks up to the episode's end not all in yet."""
        if not self.sim_clock or end_ns is None:
            return False
        return any(self._newest_tick_by_topic.get(topic, end_ns) < end_ns
                   for topic in writer.counts if every_tick(topic))

    def _due(self, writer, metadata, close_at_ns, end_ns) -> bool:
        late_ns = self.wall_clock_ns() - close_at_ns
        return late_ns >= 0 and (late_ns >= self.late_limit_ns or not (
            self._transitions_owed(writer, metadata) or self._ticks_owed(writer, end_ns)))

    def poll(self) -> None:
        """Close an ended episode's bag after the close delay, or later while transitions that
        its `end` event announced (or, on the simulated clock, its last ticks) are still on
        their way, up to `late_limit_ns`. Also puts the open bags' pending chunks on disk once
        due (what a SIGKILL can lose)."""
        for ended in list(self._ended):
            ended.writer.flush_if_due()
            if self._due(ended.writer, ended.metadata, ended.close_at_ns, ended.end_ns):
                self._ended.remove(ended)
                self._close(ended.writer, ended.metadata)
        if self.writer is not None:
            self.writer.flush_if_due()
        if self.close_at_ns is not None and self._due(self.writer, self.pending_metadata,
                                                      self.close_at_ns, self.end_stamp_ns):
            self._close_current()

    def _set_aside_ended(self) -> None:
        """Sim clock: the next episode starts while this one's last ticks may still come."""
        self._ended.append(EndedEpisode(self.writer, self.pending_metadata,
                                        self.start_stamp_ns, self.end_stamp_ns,
                                        self.close_at_ns))
        self.writer, self.pending_metadata, self.close_at_ns = None, None, None
        self.end_stamp_ns = None

    def finish(self) -> Optional[Path]:
        """Close every open bag (with metadata where the episode ended); returns the directory
        of the newest one."""
        for ended in self._ended:
            self._close(ended.writer, ended.metadata)
        self._ended = []
        return self._close_current()

    def _close_current(self) -> Optional[Path]:
        if self.writer is None:
            return None
        self._release_held(self._newest_stamp_ns)  # an interrupted episode keeps everything
        path = self._close(self.writer, self.pending_metadata)
        self.writer, self.pending_metadata, self.close_at_ns = None, None, None
        self.end_stamp_ns = None
        return path

    def _close(self, writer: EpisodeWriter, metadata: Optional[dict]) -> Path:
        metadata = dict(metadata or {**self.extra, 'outcome': 'interrupted'})
        owed = self._transitions_owed(writer, metadata)
        if owed:
            self.missing_transitions += owed
            metadata['missing_transitions'] = owed
            self.log(f'episode bag closed without {owed} announced transition(s)')
        metadata['counts'] = dict(writer.counts)
        path = writer.close(metadata)
        self.episodes_written += 1
        self.log(f'episode bag closed: {path} ({metadata.get("outcome")})')
        return path
