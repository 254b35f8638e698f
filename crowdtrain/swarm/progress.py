"""A live status line on a terminal; plain periodic log lines otherwise."""
from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO = sys.stderr, interval: float = 5.0, min_redraw: float = 0.25):
        self.stream = stream
        self.is_tty = stream.isatty()
        self.interval = interval if not self.is_tty else min_redraw
        self._last = 0.0
        self._drawn = False

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.is_tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + text[:width].ljust(width))
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
