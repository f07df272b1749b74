"""The set-up tools' terminal: prompts that reach a pipe, the owner's lines read by a thread (so
a sweep can poll for Enter while it reads the arm, from a terminal, a pipe or any stream), and a
table redrawn in place at a terminal, one short line a second elsewhere."""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Callable, Optional, TextIO


def say(line: str) -> None:
    print(line, flush=True)   # a prompt must reach a pipe before the program waits for Enter


class Lines:
    """The owner's lines, read by a thread: waited for at a prompt, polled during a sweep."""

    def __init__(self, stream: TextIO):
        self._queue: 'queue.Queue[Optional[str]]' = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), name='owner-input',
                         daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in iter(stream.readline, ''):
                self._queue.put(line)
        except (OSError, ValueError):   # a closed stream is the end of the input
            pass
        self._queue.put(None)

    def wait(self) -> Optional[str]:
        """The next line; None once the input has ended."""
        line = self._queue.get()
        if line is None:
            self._queue.put(None)   # stays ended for the next caller
        return line

    def pressed(self) -> bool:
        """A line (or the end of the input) is waiting, without blocking."""
        try:
            line = self._queue.get_nowait()
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
        return True


class LiveView:
    """What a sweep shows: at a terminal its table, redrawn in place at every reading; in a pipe
    or a log one short line a second (a redrawn table would flood it)."""

    def __init__(self, out: Callable[[str], None], live: Optional[bool] = None):
        self.out = out
        self.live = sys.stdout.isatty() if live is None else live
        self._last_line_s = time.monotonic()

    def show(self, table: Callable[[], str], line: Callable[[], str]) -> None:
        if self.live:
            self.out('\x1b[H\x1b[J' + table())
            return
        now = time.monotonic()
        if now - self._last_line_s >= 1.0:
            self.out(line())
            self._last_line_s = now
