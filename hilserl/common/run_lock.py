"""One graph per run directory: an OS-level lock (flock) on `<dir>/run.lock`.

Every process of a graph that writes the directory holds the lock shared, under the graph's
token (its starter's PID, host and start time): the `hilserl` command that started the graph, and
the learner, recorder and actor nodes (under `ros2 launch` too). A process of another graph finds
the lock held under another token and is refused in one line naming that graph's PID. The file
holds the token of the graph that took the lock, as JSON; the last holder to let go empties it.

The OS frees a flock when the last process holding it ends, however it ends: a lock left by a
graph that was killed is free at once and is taken over (the graph that takes it says so in one
line), never waited for nor deleted by hand.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

LOCK_FILE = 'run.lock'


class RunDirInUse(OSError):
    """The run directory is locked by another graph."""


def new_graph_token() -> str:
    """This process as the starter of a graph: `PID@host@start time` (unique, and says whom to
    stop)."""
    started = datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    return f'{os.getpid()}@{socket.gethostname()}@{started}'


def describe_graph(token: str) -> str:
    """'PID 123 on host, started ...' for a token (the raw token if it is not one)."""
    parts = token.split('@', 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return f'graph {token!r}'
    pid, host, started = parts
    ended = ''
    if host == socket.gethostname() and not _alive(int(pid)):
        ended = ', which has ended: its nodes are still closing'
    return f'PID {pid} on {host}, started {started}{ended}'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, another user's
    return True


class RunLock:
    """A held share of a run directory's lock; `release()` (also at interpreter exit) lets go."""

    def __init__(self, fd: int, path: Path, graph: str, taken_over: Optional[str]):
        self._fd: Optional[int] = fd
        self.path = path
        self.graph = graph
        self.taken_over = taken_over  # the token of a stale lock this one replaced
        atexit.register(self.release)

    def takeover_line(self) -> Optional[str]:
        """One line saying whose stale lock was taken over (None: the lock was free)."""
        if self.taken_over is None:
            return None
        pid = self.taken_over.split('@', 1)[0]
        return (f'run directory {self.path.parent}: the stale lock of PID {pid} was taken over '
                f'({describe_graph(self.taken_over)}; it ended without releasing it)')

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        atexit.unregister(self.release)
        try:  # the last holder empties the file: the next graph finds a clean end, not a stale one
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
        except OSError:
            pass  # others of the graph still hold it
        finally:
            os.close(fd)  # closing lets go

    def __enter__(self) -> 'RunLock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_run_lock(directory, graph: Optional[str] = None, wait_s: float = 30.0) -> RunLock:
    """Hold `directory`'s lock as a process of `graph` (None: a graph of this process alone),
    creating the directory. RunDirInUse (one line naming the other graph's PID) when another
    graph holds it. `wait_s` bounds only the moments another process holds it exclusively
    (writing or emptying the file)."""
    graph = graph or new_graph_token()
    path = Path(directory) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        taken_over = _join(fd, path, graph, wait_s)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(fd, path, graph, taken_over)


def check_run_lock(directory, graph: Optional[str] = None, wait_s: float = 30.0) -> None:
    """Raise RunDirInUse when another graph than `graph` holds `directory`'s lock; hold nothing
    and create nothing (a graph's starter that is not one of its holders: `ros2 launch`)."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        # a token no holder has: free -> no conflict; held -> by another graph
        _join(fd, path, graph or '', wait_s, take=False)
    finally:
        os.close(fd)


def _join(fd: int, path: Path, graph: str, wait_s: float, take: bool = True) -> Optional[str]:
    """Take `fd`'s lock shared under `graph`; the token of a stale lock taken over, or None."""
    deadline = time.monotonic() + wait_s
    while True:
        if _flock(fd, fcntl.LOCK_EX):  # nobody holds it: any token in the file is stale
            if not take:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            previous = _read(fd)
            if previous != graph:
                _write(fd, graph)
            fcntl.flock(fd, fcntl.LOCK_SH)
            holder = _read(fd)
            if holder != graph:  # another graph took it between the two (not on Linux)
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise _in_use(path, holder)
            return previous if previous and previous != graph else None
        if _flock(fd, fcntl.LOCK_SH):  # held shared: by this graph or another
            holder = _read(fd)
            if holder == graph:
                if not take:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise _in_use(path, holder)
        # held exclusively for a moment: a holder writing or emptying the file
        if time.monotonic() > deadline:
            raise _in_use(path, _read(fd))
        time.sleep(0.05)


def _in_use(path: Path, holder: str) -> RunDirInUse:
    who = describe_graph(holder) if holder else 'another process'
    return RunDirInUse(f'run directory {path.parent} is in use by another graph ({who}); stop '
                       'that one first or choose another run directory')


def _flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(fd: int) -> str:
    """The token in the lock file ('' when empty or unreadable)."""
    size = os.fstat(fd).st_size
    try:
        return str(json.loads(os.pread(fd, size, 0).decode())['graph']) if size else ''
    except (ValueError, KeyError, TypeError):
        return ''


def _write(fd: int, graph: str) -> None:
    text = json.dumps({'graph': graph, 'pid': os.getpid(), 'host': socket.gethostname()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode() + b'\n', 0)
