"""Which ROS domain a `hilserl` graph runs on, so that two graphs on one machine never exchange
messages. ROS-free: DDS participants are seen through the UDP ports they hold (RTPS maps each
domain to its own port range), and hilserl graphs through a lock file per domain that the
`hilserl` process holds while its graph runs (flock: a dead process's lock frees itself).

A graph with no domain asked for gets the lowest domain that no participant on this machine uses
and no other hilserl graph holds. An asked-for domain (`--domain-id`, ROS_DOMAIN_ID) is used as
it is, unless another hilserl graph with the same namespace and a part that overlaps runs there:
that one is refused, since the two would drive and record each other's episodes."""
from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Set

# RTPS well-known ports (DDSI-RTPS 9.6.1.1): PB + DG * domain + offsets, PB 7400, DG 250.
RTPS_PORT_BASE = 7400
RTPS_DOMAIN_GAIN = 250
MAX_DOMAIN_ID = 232  # the largest domain whose ports stay below 65536 (ROS's own limit)
PROC_NET_UDP = ('/proc/net/udp', '/proc/net/udp6')


class DomainBusy(RuntimeError):
    """The asked-for domain has another hilserl graph that this one would mix with."""


def lock_directory() -> Path:
    """One folder per machine (every user's graphs share the loopback interface)."""
    return Path(os.environ.get('HILSERL_DOMAIN_LOCK_DIR')
                or Path(tempfile.gettempdir()) / 'hilserl-ros-domains')


def domains_with_participants(proc_net_files: Iterable[str] = PROC_NET_UDP) -> Set[int]:
    """Domains with a DDS participant on this machine: any bound UDP port in a domain's range."""
    domains = set()
    for name in proc_net_files:
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or ':' not in fields[1]:
                continue
            port = int(fields[1].rsplit(':', 1)[1], 16)
            domain, offset = divmod(port - RTPS_PORT_BASE, RTPS_DOMAIN_GAIN)
            if port >= RTPS_PORT_BASE and domain <= MAX_DOMAIN_ID and offset >= 0:
                domains.add(domain)
    return domains


@dataclass(frozen=True)
class GraphLockInfo:
    """What a running graph wrote into its lock: enough to name it in a refusal."""
    domain_id: int
    namespace: str
    part: str
    pid: int
    run_dir: str
    mode: str

    def describe(self) -> str:
        where = f' namespace {self.namespace}' if self.namespace else ''
        return f'`hilserl {self.mode}` (PID {self.pid}, run {self.run_dir}{where})'

    def overlaps(self, namespace: str, part: str) -> bool:
        """Same topics: same namespace, and not the learner and robot halves of one graph."""
        return (_namespace_key(self.namespace) == _namespace_key(namespace)
                and (self.part == part or 'all' in (self.part, part)))


class DomainClaim:
    """A held lock for one graph on one domain; released on close() or when the process ends."""

    def __init__(self, domain_id: int, chosen: bool, lock_file, in_use: Set[int]):
        self.domain_id = domain_id
        self.chosen = chosen            # picked here, not asked for
        self.skipped_in_use = in_use    # domains found in use when choosing
        self._file = lock_file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # the file stays (see running_graphs)
            self._file = None

    def announce(self) -> str:
        """One line saying where the graph is and how to watch it from another terminal."""
        how = ('chosen free on this machine' if self.chosen
               else 'as asked (--domain-id / ROS_DOMAIN_ID)')
        busy = sorted(d for d in self.skipped_in_use if d < self.domain_id)
        if self.chosen and busy:
            how += f'; {_list(busy)} in use'
        return (f'ROS domain {self.domain_id} ({how}). To watch it from another terminal: '
                f'ROS_DOMAIN_ID={self.domain_id} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST '
                f'ros2 topic list (or rviz2)')


def running_graphs(directory: Optional[Path] = None) -> List[GraphLockInfo]:
    """Every hilserl graph whose process still holds its lock."""
    directory = directory or lock_directory()
    found = []
    for path in sorted(directory.glob('domain-*.lock')) if directory.is_dir() else ():
        info = _read(path)
        try:
            with open(path, 'a') as probe:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if info is not None:
                found.append(info)
            continue
        except OSError:
            continue
        # nobody holds it: a graph that has ended (the file stays: removing it could race with
        # a graph that has opened it and is about to lock it)
    return found


def claim_domain(requested: Optional[int], *, namespace: str = '', part: str = 'all',
                 run_dir: str = '', mode: str = '', directory: Optional[Path] = None,
                 proc_net_files: Iterable[str] = PROC_NET_UDP) -> DomainClaim:
    """Hold a domain for one graph: `requested` (None: choose the lowest free one)."""
    directory = directory or lock_directory()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(directory, 0o1777)  # every user's graphs share it, as /tmp
    except OSError:
        pass
    ours = dict(namespace=namespace, part=part, pid=os.getpid(), run_dir=str(run_dir), mode=mode)
    if requested is not None:
        for other in running_graphs(directory):
            if other.domain_id == requested and other.overlaps(namespace, part):
                raise DomainBusy(
                    f'ROS domain {requested} already runs {other.describe()}: the two graphs '
                    f'would drive and record each other\'s episodes. Stop it, or pass another '
                    f'--domain-id (or leave --domain-id and ROS_DOMAIN_ID out: a free one is '
                    f'chosen)')
        lock = _lock(directory, requested, namespace, part, ours, wait=True)
        return DomainClaim(requested, False, lock, set())
    in_use = domains_with_participants(proc_net_files)
    held = {g.domain_id for g in running_graphs(directory)}
    for domain in range(MAX_DOMAIN_ID + 1):
        if domain in in_use or domain in held:
            continue
        lock = _lock(directory, domain, namespace, part, ours, wait=False)
        if lock is None:
            continue  # another hilserl took it a moment ago
        if any(g.domain_id == domain and g.pid != os.getpid()
               for g in running_graphs(directory)):
            lock.close()  # another graph's lock on this domain appeared meanwhile
            continue
        return DomainClaim(domain, True, lock, in_use | held)
    raise DomainBusy(f'every ROS domain 0..{MAX_DOMAIN_ID} is in use on this machine; pass '
                     f'--domain-id to share one')


def _lock(directory: Path, domain: int, namespace: str, part: str, info: dict, wait: bool):
    path = directory / f'domain-{domain:03d}-{_namespace_key(namespace)}-{part}.lock'
    deadline = time.monotonic() + 5.0
    while True:
        handle = open(path, 'a+')
        try:
            os.chmod(path, 0o666)
        except OSError:
            pass
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            if not wait or time.monotonic() > deadline:
                if not wait:
                    return None
                raise DomainBusy(f'ROS domain {domain}: the lock {path} is held by another '
                                 f'process; pass another --domain-id')
            time.sleep(0.1)
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({**info, 'domain_id': domain}))
        handle.flush()
        return handle


def _read(path: Path) -> Optional[GraphLockInfo]:
    try:
        data = json.loads(path.read_text() or '{}')
        return GraphLockInfo(int(data['domain_id']), str(data['namespace']), str(data['part']),
                             int(data['pid']), str(data['run_dir']), str(data['mode']))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _namespace_key(namespace: str) -> str:
    return re.sub(r'[^A-Za-z0-9_]', '_', namespace.strip('/')) or '_'


def _list(domains: List[int]) -> str:
    return ('domain ' if len(domains) == 1 else 'domains ') + ', '.join(map(str, domains))
