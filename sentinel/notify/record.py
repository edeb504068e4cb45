"""A transport that posts nothing: each message Slack would get is written to a file instead.

For ``sentinel demo`` and dry runs without Slack credentials (``notify.record_dir``). It
behaves like a bot token for the notifier (threads, uploads, finding a message by its
idempotency key after a restart), so the outbox, deduplication and threads work exactly
as with Slack: ``DIR/messages.jsonl`` gets one JSON object per message (``ts``,
``thread_ts``, ``key``, ``text``, or ``file`` for a plot, written beside it as a PNG).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

MESSAGES = "messages.jsonl"
CHANNEL = "record"


class RecordTransport:
    """Write messages to ``directory/messages.jsonl`` and plots to ``directory/*.png``."""

    threads = True
    uploads = True
    name = CHANNEL

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / MESSAGES
        self._lock = threading.Lock()
        self._seq = len(self.read())

    def __repr__(self) -> str:
        return f"RecordTransport({str(self.directory)!r})"

    def read(self) -> list[dict[str, Any]]:
        """Return the recorded messages, oldest first."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def _append(self, rec: dict[str, Any]) -> str:
        with self._lock:
            self._seq += 1
            # Slack's ts is seconds.microseconds and unique in a channel: so is this one.
            ts = f"{int(time.time())}.{self._seq:06d}"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"ts": ts, "time": time.time(), **rec}) + "\n")
            return ts

    def post(self, text: str, thread: tuple[str, str] | None, key: str) -> tuple[str, str]:
        """Record a message (a reply when ``thread`` is given); return (channel, ts)."""
        return CHANNEL, self._append({"thread_ts": thread[1] if thread else None, "key": key,
                                      "text": text})

    def upload(self, png: bytes, filename: str, title: str, thread: tuple[str, str]) -> None:
        """Write the plot as a PNG beside the messages and record it in the thread."""
        name = f"{self._seq + 1:04d}-{Path(filename).name}"
        (self.directory / name).write_bytes(png)
        self._append({"thread_ts": thread[1], "key": "", "text": title, "file": name})

    def find(self, key: str, since: float, thread: tuple[str, str] | None) -> str | None:
        """Return the ts of the message recorded with ``key``, if any."""
        for rec in self.read():
            if rec.get("key") == key and rec.get("time", 0.0) >= since:
                return str(rec["ts"])
        return None
