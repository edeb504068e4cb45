"""What every collector is: a name, a default, ``collect()`` returning families, ``close()``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    # Only for annotations: the config finds the collectors through this package.
    from sentinel.agent.config import AgentConfig
    from sentinel.exposition import MetricFamily


@dataclass
class Context:
    """What collectors get from the agent: config, host name, clocks (injected in tests)."""

    config: AgentConfig
    hostname: str = field(default_factory=socket.gethostname)
    now: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    # Built by the agent for the gpu collector when --gpu-replay is given.
    nvml_backend: Any | None = None


class Collector:
    """Base class: subclasses set ``name`` and ``default_enabled`` and implement ``collect``.

    ``name`` is the collector's label value, its entry in ``agent.collectors`` and its
    ``--collector.NAME`` flag; ``default_enabled`` (True unless a collector says
    otherwise) is whether it runs when the config does not list collectors, as
    node_exporter's ``registerCollector(name, default, ...)``.

    ``collect`` runs in a runner thread of the agent's (never two at once for one collector)
    and may raise or overrun ``agent.collector_timeout_seconds``; the agent then reports
    ``sentinel_collector_success 0`` for this collector and drops its output for that
    scrape. A collector that works but is degraded (NVML absent, a bad textfile) sets
    ``self.success = False`` instead, keeping what it could export.
    """

    name: ClassVar[str] = ""
    default_enabled: ClassVar[bool] = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.success = True

    def start(self) -> None:
        """Start background work (threads, sockets); called once before serving."""

    def collect(self) -> list[MetricFamily]:
        """Return this collector's metric families for one scrape."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work and release resources."""


# The largest procfs file a collector reads (/proc/stat of a 2048-CPU host is ~300 KB).
MAX_PROC_FILE_BYTES = 4 << 20


def read_file(path: str) -> bytes:
    """Return the bytes of a /proc file, read with plain system calls.

    Python's ``open()`` builds a buffered reader per call: 40-70 us a file on the 2-core
    VM against 15 for ``os.open``/``os.read``/``os.close``, and a scrape reads four.
    ValueError past :data:`MAX_PROC_FILE_BYTES`, OSError as ``open()`` raises it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PROC_FILE_BYTES:
                raise ValueError(f"{path}: larger than {MAX_PROC_FILE_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
