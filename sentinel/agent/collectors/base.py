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
    VM against 15 for ``os.open``/``os.pread``/``os.close``. The collectors keep their
    files open instead (:class:`ProcFile`).
    ValueError past :data:`MAX_PROC_FILE_BYTES`, OSError as ``open()`` raises it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _pread_all(fd, path)
    finally:
        os.close(fd)


def _pread_all(fd: int, path: str) -> bytes:
    """Return the bytes of the open file ``fd`` from offset 0 to its end (bounded)."""
    chunks = []
    size = 0
    while chunk := os.pread(fd, 65536, size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_PROC_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_PROC_FILE_BYTES} bytes")
    return b"".join(chunks)


class ProcFile:
    """A procfs file kept open and read again from its start on every :meth:`read`.

    Reading a procfs file from offset 0 makes its content anew (seq_file; ``top`` reads
    /proc/stat so), so one descriptor serves every scrape and saves an ``open`` and a
    ``close`` a read. Only files that report size 0, as procfs files do, are kept open:
    a regular file (a test's fixture tree, which a test may replace) is opened for each
    read. An error closes the kept descriptor, so the next read opens the path again.
    One thread reads a ProcFile at a time (each collector has its own).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> bytes:
        """Return the file's bytes; errors as :func:`read_file`."""
        fd = self._fd
        kept = fd is not None
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not kept and os.fstat(fd).st_size == 0:
                self._fd, kept = fd, True
            return _pread_all(fd, self.path)
        except BaseException:
            self._fd, kept = None, False  # closed below; opened afresh next time
            raise
        finally:
            if not kept:
                os.close(fd)

    def close(self) -> None:
        """Close the kept descriptor, if any."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
