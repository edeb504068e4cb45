"""The demo's terminal view: a line per thing that happened, and a live status line.

Lines are timestamped from the demo's start and tagged (``job``, ``finding``,
``decision``, ``action``, ``fault``...), so the story reads top to bottom and can be
piped or logged. On a terminal the last line is a status line rewritten in place (job
step, loss, tokens/s, nodes, the episode in progress); elsewhere it is printed every
``status_every_s``.
"""

from __future__ import annotations

import sys
import textwrap
import time
from typing import TextIO

WIDTH = 100
TAG_WIDTH = 9


class View:
    """Print the story as it happens."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None,
                 status_every_s: float = 10.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.t0 = time.time()
        self.status_every_s = status_every_s
        self._status = ""
        self._last_status_print = 0.0
        self.lines: list[str] = []

    def elapsed(self, at: float | None = None) -> float:
        """Return seconds since the demo started (at ``at``, default now)."""
        return (time.time() if at is None else at) - self.t0

    def _write(self, text: str) -> None:
        if self.tty and self._status:
            self.out.write("\r\x1b[2K")  # the status line gives way to the new line
        self.out.write(text + "\n")
        self.lines.append(text)
        if self.tty and self._status:
            self.out.write(self._status[: WIDTH + 20])
        self.out.flush()

    def plain(self, text: str = "") -> None:
        """Print a line as is."""
        self._write(text)

    def header(self, text: str) -> None:
        """Print a section header."""
        self._write("")
        self._write(f"── {text} " + "─" * max(3, WIDTH - len(text) - 4))

    def say(self, tag: str, text: str, at: float | None = None) -> None:
        """Print one event, wrapped under its tag."""
        head = f"{self.elapsed(at):6.1f}s  {tag:<{TAG_WIDTH}} "
        body = textwrap.wrap(text, WIDTH - len(head)) or [""]
        self._write(head + body[0])
        for more in body[1:]:
            self._write(" " * len(head) + more)

    def status(self, text: str) -> None:
        """Show the live status (in place on a terminal, every few seconds elsewhere)."""
        line = f"[{self.elapsed():6.1f}s] {text}"
        if self.tty:
            self._status = line
            self.out.write("\r\x1b[2K" + line[: WIDTH + 20])
            self.out.flush()
        elif time.monotonic() - self._last_status_print >= self.status_every_s:
            self._last_status_print = time.monotonic()
            self._write(line)

    def end_status(self) -> None:
        """Clear the status line (before the summary)."""
        if self.tty and self._status:
            self.out.write("\r\x1b[2K")
            self.out.flush()
        self._status = ""
