"""What the hardware tests share to act as the person at the arm: a video file as the camera,
a command's output read line by line, keys typed into a terminal, and a whole terminal session
(one pseudo-terminal that every command runs in, as a shell runs them in the foreground)."""
import fcntl
import os
import pty
import queue
import re
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np


def write_camera_video(path: Path, width_px: int, height_px: int, frames: int = 400) -> None:
    """A textured scene that changes every frame (never blank, never frozen), MJPG, 15 fps."""
    import cv2
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 15,
                             (width_px, height_px))
    assert writer.isOpened()
    for _ in range(frames):
        coarse = rng.integers(0, 256, (height_px // 8, width_px // 8, 3), np.uint8)
        writer.write(np.kron(coarse, np.ones((8, 8, 1), np.uint8)))
    writer.release()


class Lines:
    """A command's output, line by line, from a reader thread."""

    def __init__(self, stream: Iterable[str], transcript: Optional[Path] = None):
        """`transcript`: every line also goes to this file, as it comes (what a failure's
        last lines do not show)."""
        self.queue, self.seen = queue.Queue(), []
        threading.Thread(target=self._read, args=(stream, transcript), daemon=True).start()

    def _read(self, stream, transcript):
        with open(transcript or os.devnull, 'a', buffering=1) as copy:
            for line in stream:
                self.queue.put(line.rstrip())
                copy.write(f'{time.monotonic():.2f} {line.rstrip()}\n')
        self.queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f'no {pattern!r} in the output:\n' + '\n'.join(self.seen[-40:]))


def hold(press: Callable[[str], None], key: str, seconds: float) -> None:
    """A held key, as a terminal delivers it: the character repeated (0 s: pressed once)."""
    end = time.monotonic() + seconds
    while True:
        press(key)
        if time.monotonic() >= end:
            return
        time.sleep(0.04)


def play_episodes(lines: Lines, press: Callable[[str], None], script, first_s: float,
                  episode_s: float, hands=None) -> None:
    """A person at the keys, episode by episode: once the graph says `episode N started: go`,
    hold each (key, seconds), press the label key, and see the outcome. `script`: (episode,
    ((key, seconds), ...), label key, outcome) rows; `hands(episode)`: what they do with a
    leader arm first."""
    for episode, held, label, outcome in script:
        lines.wait_for(f'episode {episode} started: go', first_s if episode == script[0][0]
                       else episode_s)
        if hands is not None:
            hands(episode)
        for key, seconds in held:
            hold(press, key, seconds)
        press(label)
        lines.wait_for(f'episode {episode} ended: {outcome}', episode_s)


_ESCAPE = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


def terminal_lines(master_fd: int) -> Iterator[str]:
    """What programs write to a terminal, as lines without carriage returns and escape
    sequences (a table redrawn in place is its lines); ends when the terminal closes."""
    pending = b''
    while True:
        try:
            chunk = os.read(master_fd, 4096)
        except OSError:   # EIO: nothing holds the terminal open any more
            chunk = b''
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b'\n')
        for raw in complete:
            yield _ESCAPE.sub('', raw.decode(errors='replace')).replace('\r', '')
    if pending:
        yield _ESCAPE.sub('', pending.decode(errors='replace')).replace('\r', '')


def _foreground_in_terminal() -> None:
    """Child side: a session of its own with the terminal (stdin) as its controlling terminal,
    as a shell's foreground job has: a typed Ctrl-C is SIGINT to it and its teleop."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class TerminalSession:
    """A person's terminal for a series of commands: one pseudo-terminal (line mode, echo on, as
    a shell leaves it) that each command gets as its controlling terminal, stdin, stdout and
    stderr. Enter is typed as a terminal sends it ('\\r'); a command that leaves the terminal in
    another mode spoils the next one, as it would for a person."""

    def __init__(self, cwd: Path, env: dict, transcript: Optional[Path] = None):
        self.cwd, self.env, self.transcript = cwd, env, transcript
        self.master, self._slave = pty.openpty()
        self.lines = Lines(terminal_lines(self.master), transcript)
        self.process: Optional[subprocess.Popen] = None

    def start(self, argv: Sequence[str]) -> subprocess.Popen:
        assert self.process is None or self.process.poll() is not None, 'one command at a time'
        self.process = subprocess.Popen(list(argv), stdin=self._slave, stdout=self._slave,
                                        stderr=self._slave, cwd=self.cwd, env=self.env,
                                        preexec_fn=_foreground_in_terminal)
        return self.process

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())
        if self.transcript is not None:   # keys do not echo once a program reads them raw
            with open(self.transcript, 'a') as copy:
                copy.write(f'{time.monotonic():.2f} (typed {text!r})\n')

    def enter(self) -> None:
        self.type('\r')

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        return self.lines.wait_for(pattern, timeout_s)

    def finish(self, last_line: str, timeout_s: float, code: int = 0) -> None:
        """The command prints `last_line` and exits with `code`."""
        self.wait_for(last_line, timeout_s)
        returned = self.process.wait(timeout=timeout_s)
        assert returned == code, (returned, '\n'.join(self.lines.seen[-40:]))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 2)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        for fd in (self._slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass
