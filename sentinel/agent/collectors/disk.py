"""Block-device I/O from ``<procfs>/diskstats``, with node_exporter's semantics and units."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sentinel.agent.collectors.base import Collector, Context, read_file
from sentinel.exposition import CounterMetricFamily, GaugeMetricFamily, MetricFamily

# /proc/diskstats always counts 512-byte sectors, whatever the device's block size
# (Documentation/admin-guide/iostats.rst); node_exporter multiplies by the same.
SECTOR_BYTES = 512
MS = 0.001


@dataclass(frozen=True)
class DiskStats:
    """The /proc/diskstats fields sentinel exports for one device (raw units)."""

    reads: int
    sectors_read: int
    read_ms: int
    writes: int
    sectors_written: int
    write_ms: int
    io_ms: int
    in_flight: int = 0  # I/Os in progress at the reading (not a counter)


def parse_diskstats(text: str, exclude: re.Pattern[str] | None = None) -> dict[str, DiskStats]:
    """Parse diskstats text into {device: DiskStats}, skipping excluded devices."""
    out: dict[str, DiskStats] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 14:
            raise ValueError(
                f"diskstats line {lineno}: {len(parts)} fields, expected at least 14: {line!r}"
            )
        dev = parts[2]
        if exclude is not None and exclude.match(dev):
            continue
        try:
            f = [int(x) for x in parts[3:14]]
        except ValueError:
            raise ValueError(f"diskstats line {lineno}: non-numeric field: {line!r}") from None
        out[dev] = DiskStats(
            reads=f[0], sectors_read=f[2], read_ms=f[3], writes=f[4], sectors_written=f[6],
            write_ms=f[7], io_ms=f[9], in_flight=f[8],
        )
    return out


class DiskCollector(Collector):
    """Per-device I/O counters and the mean read latency over the last interval."""

    name = "disk"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.path = Path(ctx.config.procfs) / "diskstats"
        self.exclude = re.compile(ctx.config.disk_exclude)
        self._prev: dict[str, DiskStats] = {}

    def collect(self) -> list[MetricFamily]:
        """Read diskstats once and build the disk families."""
        stats = parse_diskstats(read_file(str(self.path)).decode(), self.exclude)
        labels = ["device"]

        def counter(name: str, help_: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_, labels=labels)

        reads = counter("sentinel_disk_reads_completed", "Reads completed.")
        writes = counter("sentinel_disk_writes_completed", "Writes completed.")
        rbytes = counter("sentinel_disk_read_bytes", "Bytes read.")
        wbytes = counter("sentinel_disk_written_bytes", "Bytes written.")
        rtime = counter("sentinel_disk_read_time_seconds", "Time spent reading.")
        wtime = counter("sentinel_disk_write_time_seconds", "Time spent writing.")
        iotime = counter("sentinel_disk_io_time_seconds", "Time spent doing I/O.")
        latency = GaugeMetricFamily(
            "sentinel_disk_read_latency_seconds",
            "Mean read latency over the last collection interval (0 when no reads).",
            labels=labels,
        )
        for dev, s in sorted(stats.items()):
            reads.add_metric([dev], float(s.reads))
            writes.add_metric([dev], float(s.writes))
            rbytes.add_metric([dev], float(s.sectors_read * SECTOR_BYTES))
            wbytes.add_metric([dev], float(s.sectors_written * SECTOR_BYTES))
            rtime.add_metric([dev], s.read_ms * MS)
            wtime.add_metric([dev], s.write_ms * MS)
            iotime.add_metric([dev], s.io_ms * MS)
            prev = self._prev.get(dev)
            if prev is not None:
                latency.add_metric([dev], read_latency_seconds(prev, s))
        self._prev = stats
        return [reads, writes, rbytes, wbytes, rtime, wtime, iotime, latency]


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
