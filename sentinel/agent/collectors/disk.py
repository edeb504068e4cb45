"""Block-device I/O from ``<procfs>/diskstats``, with node_exporter's semantics and units."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from sentinel.agent.collectors.base import Collector, Context, ProcFile
from sentinel.exposition import (
    CounterMetricFamily,
    GaugeMetricFamily,
    LabelSet,
    MetricFamily,
    Sample,
)

# /proc/diskstats always counts 512-byte sectors, whatever the device's block size
# (Documentation/admin-guide/iostats.rst); node_exporter multiplies by the same.
SECTOR_BYTES = 512
MS = 0.001


class DiskStats(NamedTuple):
    """The /proc/diskstats fields sentinel exports for one device (raw units).

    A named tuple, not a frozen dataclass: built for every device every scrape, and a
    frozen dataclass's ``__init__`` costs several times as much.
    """

    reads: int
    sectors_read: int
    read_ms: int
    writes: int
    sectors_written: int
    write_ms: int
    io_ms: int
    in_flight: int = 0  # I/Os in progress at the reading (not a counter)


def parse_diskstats(text: str, exclude: re.Pattern[str] | None = None,
                    excluded: dict[str, bool] | None = None) -> dict[str, DiskStats]:
    """Parse diskstats text into {device: DiskStats}, skipping excluded devices.

    ``excluded``, when given, remembers each device name's match against ``exclude``
    across calls (a node's device names recur every scrape); it is emptied past
    :data:`MAX_EXCLUDE_CACHE` names.
    """
    out: dict[str, DiskStats] = {}
    if excluded is not None and len(excluded) > MAX_EXCLUDE_CACHE:
        excluded.clear()
    for lineno, line in enumerate(text.splitlines(), 1):
        # The name first, cut from the line's head: an excluded device (loop, ram; most
        # lines of a host's diskstats) is skipped without splitting its 17+ fields.
        head = line.split(None, 3)
        if not head:
            continue
        if len(head) < 4:
            raise ValueError(
                f"diskstats line {lineno}: {len(head)} fields, expected at least 14: {line!r}"
            )
        dev = head[2]
        if exclude is not None:
            skip = None if excluded is None else excluded.get(dev)
            if skip is None:
                skip = exclude.match(dev) is not None
                if excluded is not None:
                    excluded[dev] = skip
            if skip:
                continue
        parts = head[3].split()
        if len(parts) < 11:
            raise ValueError(
                f"diskstats line {lineno}: {len(parts) + 3} fields, expected at least 14: "
                f"{line!r}"
            )
        try:
            f = [int(x) for x in parts[:11]]
        except ValueError:
            raise ValueError(f"diskstats line {lineno}: non-numeric field: {line!r}") from None
        out[dev] = DiskStats(f[0], f[2], f[3], f[4], f[6], f[7], f[9], f[8])
    return out


# Device names whose exclusion is remembered (a host has tens to hundreds).
MAX_EXCLUDE_CACHE = 4096


class DiskCollector(Collector):
    """Per-device I/O counters and the mean read latency over the last interval."""

    name = "disk"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.path = str(Path(ctx.config.procfs) / "diskstats")
        self._file = ProcFile(self.path)
        self.exclude = re.compile(ctx.config.disk_exclude)
        self._excluded: dict[str, bool] = {}
        self._prev: dict[str, DiskStats] = {}
        # Each device's label set, shared by its series in every family and scrape
        # (nothing changes a sample's labels once added); rebuilt when devices change.
        self._labels: dict[str, LabelSet] = {}
        # The families, built once and reset at every collect (one collect at a time).
        self._fams = _families()

    def collect(self) -> list[MetricFamily]:
        """Read diskstats once and build the disk families."""
        stats = parse_diskstats(self._file.read().decode(), self.exclude, self._excluded)
        fams = self._fams
        for f in fams:
            f.reset()
        reads, writes, rbytes, wbytes, rtime, wtime, iotime, latency = fams
        if self._labels.keys() != stats.keys():
            self._labels = {dev: LabelSet([("device", dev)]) for dev in stats}
        by_dev = self._labels
        for dev, s in sorted(stats.items()):
            lab = by_dev[dev]
            reads.samples.append(Sample(reads.name, lab, float(s.reads)))
            writes.samples.append(Sample(writes.name, lab, float(s.writes)))
            rbytes.samples.append(Sample(rbytes.name, lab, float(s.sectors_read * SECTOR_BYTES)))
            wbytes.samples.append(
                Sample(wbytes.name, lab, float(s.sectors_written * SECTOR_BYTES)))
            rtime.samples.append(Sample(rtime.name, lab, s.read_ms * MS))
            wtime.samples.append(Sample(wtime.name, lab, s.write_ms * MS))
            iotime.samples.append(Sample(iotime.name, lab, s.io_ms * MS))
            prev = self._prev.get(dev)
            if prev is not None:
                latency.samples.append(Sample(latency.name, lab, read_latency_seconds(prev, s)))
        self._prev = stats
        return list(fams)

    def close(self) -> None:
        """Close diskstats."""
        self._file.close()


def _families() -> tuple[MetricFamily, ...]:
    """Return the disk families, empty, in exposition order (latency last)."""
    labels = ["device"]

    def counter(name: str, help_: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, help_, labels=labels)

    return (
        counter("sentinel_disk_reads_completed", "Reads completed."),
        counter("sentinel_disk_writes_completed", "Writes completed."),
        counter("sentinel_disk_read_bytes", "Bytes read."),
        counter("sentinel_disk_written_bytes", "Bytes written."),
        counter("sentinel_disk_read_time_seconds", "Time spent reading."),
        counter("sentinel_disk_write_time_seconds", "Time spent writing."),
        counter("sentinel_disk_io_time_seconds", "Time spent doing I/O."),
        GaugeMetricFamily(
            "sentinel_disk_read_latency_seconds",
            "Mean read latency over the last collection interval (0 when no reads).",
            labels=labels,
        ),
    )


def read_latency_seconds(prev: DiskStats, cur: DiskStats) -> float:
    """Return delta(read time)/delta(reads) between two readings; 0 with no reads.

    A counter that went backwards (device re-attached) gives 0 rather than a
    negative latency.
    """
    d_reads = cur.reads - prev.reads
    d_ms = cur.read_ms - prev.read_ms
    if d_reads <= 0 or d_ms < 0:
        return 0.0
    return d_ms * MS / d_reads
