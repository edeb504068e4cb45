"""Host CPU, memory, load and filesystem space, read from the configured procfs."""

from __future__ import annotations

import os

from sentinel.agent.collectors.base import Collector, Context, ProcFile, read_file
from sentinel.exposition import GaugeMetricFamily, MetricFamily

# /proc/stat counts in USER_HZ.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_cpu_times(procfs: str) -> tuple[float, float]:
    """Return (busy, total) CPU seconds from the ``cpu`` line of <procfs>/stat.

    Summed as psutil's ``cpu_times()`` sums them (each field in seconds, in the kernel's
    order), which the agent used before: importing psutil cost 1.6 MB of RSS for two
    short files (docs/DESIGN.md, Agent).
    """
    path = f"{procfs}/stat"
    return parse_cpu_times(read_file(path), path)


def parse_cpu_times(data: bytes, path: str) -> tuple[float, float]:
    """Return (busy, total) CPU seconds from the bytes of ``path``, a /proc/stat."""
    # Only the first line: the rest (per-CPU lines, every IRQ's count) is most of the file.
    nl = data.find(b"\n")
    fields = (data if nl < 0 else data[:nl]).split()
    if len(fields) < 5 or fields[0] != b"cpu":
        raise ValueError(f"{path}: the first line is not 'cpu user nice system idle ...'")
    try:
        # user nice system idle iowait irq softirq steal guest guest_nice (kernel >= 2.6.33)
        t = [float(x) / CLOCK_TICKS for x in fields[1:11]]
    except ValueError:
        raise ValueError(f"{path}: a non-numeric field in the cpu line") from None
    t += [0.0] * (10 - len(t))
    idle = t[3] + t[4]
    total = sum(t)
    # guest time is already inside user/nice on Linux; do not count it twice.
    total -= t[8] + t[9]
    return total - idle, total


def read_memory(procfs: str) -> tuple[float, float]:
    """Return (total, available) bytes of RAM from <procfs>/meminfo.

    Available is the kernel's MemAvailable (Linux >= 3.14); before that, free plus
    buffers and page cache. It is kept within 0..total.
    """
    path = f"{procfs}/meminfo"
    return parse_memory(read_file(path), path)


def parse_memory(data: bytes, path: str) -> tuple[float, float]:
    """Return (total, available) bytes of RAM from the bytes of ``path``, a /proc/meminfo.

    The lines it needs are the first five of the kernel's meminfo: it stops reading
    lines once it has all of them.
    """
    kb: dict[bytes, int] = {}
    start, want = 0, len(_MEMINFO_KEYS)
    while len(kb) < want:
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start:end]
        key, _, rest = line.partition(b":")
        if key in _MEMINFO_KEYS:
            kb[key] = int(rest.split()[0])
        if end < 0:
            break
        start = end + 1
    if b"MemTotal" not in kb:
        raise ValueError(f"{path}: no MemTotal line")
    total = kb[b"MemTotal"] * 1024
    avail = kb.get(b"MemAvailable")
    if avail is None:
        avail = kb.get(b"MemFree", 0) + kb.get(b"Buffers", 0) + kb.get(b"Cached", 0)
    return float(total), float(min(max(avail * 1024, 0), total))


_MEMINFO_KEYS = frozenset((b"MemTotal", b"MemAvailable", b"MemFree", b"Buffers", b"Cached"))


def _families() -> tuple[GaugeMetricFamily, ...]:
    """Return the host families, empty, in exposition order."""
    return (
        GaugeMetricFamily(
            "sentinel_host_cpu_utilization_ratio", "CPU busy 0..1 since the last collect."
        ),
        GaugeMetricFamily("sentinel_host_memory_total_bytes", "Total RAM."),
        GaugeMetricFamily(
            "sentinel_host_memory_available_bytes", "RAM available without swapping."
        ),
        GaugeMetricFamily("sentinel_host_memory_used_bytes", "RAM in use."),
        GaugeMetricFamily("sentinel_host_load_average", "Load average.", labels=["period"]),
        GaugeMetricFamily(
            "sentinel_host_filesystem_free_bytes",
            "Free space (for unprivileged users) of the filesystem holding the path.",
            labels=["path"],
        ),
        GaugeMetricFamily(
            "sentinel_host_filesystem_size_bytes",
            "Size of the filesystem holding the path.",
            labels=["path"],
        ),
    )


class HostCollector(Collector):
    """CPU busy ratio since the last collect, RAM, load average, free space of paths."""

    name = "host"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.procfs = ctx.config.procfs
        self.paths = list(ctx.config.filesystem_paths)
        self._prev_cpu: tuple[float, float] | None = None
        self._stat = ProcFile(f"{self.procfs}/stat")
        self._meminfo = ProcFile(f"{self.procfs}/meminfo")
        self._loadavg = ProcFile(f"{self.procfs}/loadavg")
        # The families, built once and reset at every collect (one collect at a time).
        self._fams = _families()

    def collect(self) -> list[MetricFamily]:
        """Read CPU, memory, load and filesystems."""
        cpu, mem_total, mem_avail, mem_used, load, free, size = fams = self._fams
        for f in fams:
            f.reset()
        busy, total = parse_cpu_times(self._stat.read(), self._stat.path)
        prev = self._prev_cpu or (0.0, 0.0)
        self._prev_cpu = (busy, total)
        d_total = total - prev[1]
        cpu.add_metric([], max(0.0, min(1.0, (busy - prev[0]) / d_total)) if d_total > 0 else 0.0)

        ram, available = parse_memory(self._meminfo.read(), self._meminfo.path)
        mem_total.add_metric([], ram)
        mem_avail.add_metric([], available)
        mem_used.add_metric([], ram - available)

        fields = self._loadavg.read().split()
        for period, v in zip(("1m", "5m", "15m"), fields[:3], strict=True):
            load.add_metric([period], float(v))

        missing = []
        for p in self.paths:
            try:
                st = os.statvfs(p)
            except OSError:
                missing.append(p)
                continue
            free.add_metric([p], float(st.f_bavail * st.f_frsize))
            size.add_metric([p], float(st.f_blocks * st.f_frsize))
        # A configured path that is gone (unmounted dataset) is a failure people should see.
        self.success = not missing
        return list(fams)

    def close(self) -> None:
        """Close the /proc files."""
        for f in (self._stat, self._meminfo, self._loadavg):
            f.close()
