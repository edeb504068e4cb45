"""Make the disk under a folder serve reads for a while, so disk-latency series have data."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


@contextlib.contextmanager
def disk_reads(folder: Path, size: int = 32 << 20, interval: float = 0.2) -> Iterator[None]:
    """Read a file of ``folder`` from the disk (page cache dropped first) every ``interval``.

    A quiet machine serves everything from the page cache, and a rate of reads over a few
    seconds is then 0/0: a panel or a rule dividing by it has no data. The file is
    written and synced once; each round drops its pages and reads it again.
    """
    path = folder / "disk-reads.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    stop = threading.Event()

    def loop() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while not stop.is_set():
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                for off in range(0, size, 4 * CHUNK):  # a quarter of it: cheap, still disk
                    os.pread(fd, CHUNK, off)
                stop.wait(interval)
        finally:
            os.close(fd)

    t = threading.Thread(target=loop, name="disk-reads", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=10)
        path.unlink(missing_ok=True)
