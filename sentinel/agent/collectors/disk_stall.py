"""Disk stalls a scrape's average hides: /proc/diskstats sampled every second.

The disk collector's read latency is the mean over a whole scrape interval, so a stall
of a few seconds among healthy reads is diluted below any threshold (a 15 s storage
stall peaked at 6.9 ms at 15 s scrapes). This collector samples diskstats once a second
in its own thread and exports, per device, over the last ``WINDOW_S`` seconds: the
highest one-second mean read latency, the latest one, the most I/Os in flight, and the
highest share of a second the device spent doing I/O. Seconds without reads give no
latency (an idle second is not a fast one). Memory: ``WINDOW_S`` samples per device,
``MAX_DEVICES`` devices; cost: one read and parse of diskstats a second
(docs/BENCHMARKS.md, "Agent").
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from pathlib import Path

from sentinel.agent.collectors.base import Collector, Context, ProcFile
from sentinel.agent.collectors.disk import MS, DiskStats, parse_diskstats
from sentinel.exposition import GaugeMetricFamily, MetricFamily

INTERVAL_S = 1.0
# What the exported maxima cover: the deployed scrape interval, so each scrape sees
# every second since the one before (and more than one scraper each sees them all).
WINDOW_S = 15.0
MAX_DEVICES = 256


class Second:
    """One device's second: its mean read latency (None without reads), in-flight, busy."""

    __slots__ = ("busy", "in_flight", "latency", "t")

    def __init__(self, t: float, latency: float | None, in_flight: int, busy: float) -> None:
        self.t, self.latency, self.in_flight, self.busy = t, latency, in_flight, busy


def second(t: float, prev: DiskStats, cur: DiskStats, dt: float) -> Second:
    """Return what one device did between two readings ``dt`` seconds apart."""
    d_reads, d_ms = cur.reads - prev.reads, cur.read_ms - prev.read_ms
    latency = d_ms * MS / d_reads if d_reads > 0 and d_ms >= 0 else None
    d_io = cur.io_ms - prev.io_ms
    busy = min(1.0, max(0.0, d_io * MS / dt)) if dt > 0 else 0.0
    return Second(t, latency, cur.in_flight, busy)


class DiskStallCollector(Collector):
    """Per-device worst second of read latency, I/Os in flight and busy time."""

    name = "disk_stall"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.path = str(Path(ctx.config.procfs) / "diskstats")
        self._file = ProcFile(self.path)  # its own: the sampler thread reads it
        self.exclude = re.compile(ctx.config.disk_exclude)
        self._excluded: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._seconds: dict[str, deque[Second]] = {}
        self._prev: tuple[float, dict[str, DiskStats]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error = ""

    def start(self) -> None:
        """Start the one-second sampler thread."""
        self._thread = threading.Thread(target=self._run, name="disk-stall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.sample()
            except (OSError, ValueError) as e:  # counted and exported, never fatal
                self.errors += 1
                self.last_error = str(e)

    def sample(self, now: float | None = None) -> None:
        """Read diskstats once and record each device's last second."""
        t = self.ctx.monotonic() if now is None else now
        stats = parse_diskstats(self._file.read().decode(), self.exclude, self._excluded)
        prev, self._prev = self._prev, (t, stats)
        if prev is None:
            return
        dt = t - prev[0]
        with self._lock:
            for dev, cur in stats.items():
                old = prev[1].get(dev)
                if old is None:
                    continue
                ring = self._seconds.get(dev)
                if ring is None:
                    if len(self._seconds) >= MAX_DEVICES:
                        continue
                    ring = self._seconds[dev] = deque(maxlen=int(WINDOW_S / INTERVAL_S) + 1)
                ring.append(second(t, old, cur, dt))
            for dev in [d for d in self._seconds if d not in stats]:
                del self._seconds[dev]  # a device gone (unplugged) stops being exported

    def collect(self) -> list[MetricFamily]:
        """Export each device's worst second of the last WINDOW_S seconds."""
        labels = ["device"]
        lat_max = GaugeMetricFamily(
            "sentinel_disk_read_latency_max_seconds",
            f"Highest one-second mean read latency in the last {WINDOW_S:g} s (seconds "
            "without reads left out).", labels=labels)
        lat_last = GaugeMetricFamily(
            "sentinel_disk_read_latency_recent_seconds",
            "Mean read latency of the latest second with reads in the window.", labels=labels)
        inflight = GaugeMetricFamily(
            "sentinel_disk_in_flight_ios_max",
            f"Most I/Os in progress at a one-second sample in the last {WINDOW_S:g} s.",
            labels=labels)
        busy = GaugeMetricFamily(
            "sentinel_disk_busy_ratio_max",
            f"Highest share of a second spent doing I/O in the last {WINDOW_S:g} s.",
            labels=labels)
        cutoff = self.ctx.monotonic() - WINDOW_S
        with self._lock:
            for dev, ring in sorted(self._seconds.items()):
                recent = [s for s in ring if s.t > cutoff]
                if not recent:
                    continue
                lats = [s.latency for s in recent if s.latency is not None]
                if lats:
                    lat_max.add_metric([dev], max(lats))
                    lat_last.add_metric([dev], lats[-1])
                inflight.add_metric([dev], float(max(s.in_flight for s in recent)))
                busy.add_metric([dev], max(s.busy for s in recent))
        self.success = self.errors == 0 or self._prev is not None
        return [lat_max, lat_last, inflight, busy]

    def latest(self) -> tuple[float | None, int | None]:
        """Return the newest second's worst read latency (None: no reads) and the most
        I/Os in flight over the devices (None: no second sampled lately).

        The agent's per-second node records (``sentinel.agent.nodestream``) are built
        from it: the same seconds this collector exports, not a second reading.
        """
        cutoff = self.ctx.monotonic() - 2 * INTERVAL_S
        lat: float | None = None
        inflight: int | None = None
        with self._lock:
            for ring in self._seconds.values():
                if not ring or ring[-1].t <= cutoff:
                    continue
                s = ring[-1]
                inflight = max(inflight or 0, s.in_flight)
                if s.latency is not None:
                    lat = max(lat or 0.0, s.latency)
        return lat, inflight

    def close(self) -> None:
        """Stop the sampler."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * INTERVAL_S)
            if self._thread.is_alive():
                return  # still reading: leave the file to the process's exit
        self._file.close()


def sample_cost_s(collector: DiskStallCollector, n: int = 200) -> float:
    """Return the CPU seconds one sample takes (mean of ``n``), for the cost figure."""
    start = time.thread_time()
    for i in range(n):
        collector.sample(now=float(i))
    return (time.thread_time() - start) / n
