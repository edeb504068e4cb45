"""Log a recurring problem once per interval, not once per occurrence.

A daemon fed by untrusted input (datagrams, HTTP clients) must not write a line, let
alone a traceback, for every bad input: a flood would fill the journal and cost more
than the input itself. :class:`LogLimiter` writes the first occurrence of each key at
once, then at most one line per ``interval`` saying how many were left out. The totals
belong in counters (metrics); the log only says that it happens and what it looks like.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

# Distinct keys tracked; past this the oldest is forgotten (its next line comes at once).
MAX_KEYS = 256


class LogLimiter:
    """Write at most one line per key and interval to ``logger``, counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # key -> [time of the last line written, occurrences left out since]
        self._state: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval; True if written."""
        now = self.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is not None and now - st[0] < self.interval:
                st[1] += 1
                return False
            left_out = int(st[1]) if st is not None else 0
            if st is None and len(self._state) >= MAX_KEYS:
                self._state.pop(next(iter(self._state)))
            self._state[key] = [now, 0]
        if left_out:
            msg += " (and %d more like it since the last such line)"
            args = (*args, left_out)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
