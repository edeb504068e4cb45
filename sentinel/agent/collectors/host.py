"""Host CPU, memory, load and filesystem space (psutil, reading the configured procfs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sentinel.agent.collectors.base import Collector, Context
from sentinel.exposition import GaugeMetricFamily, MetricFamily


class HostCollector(Collector):
    """CPU busy ratio since the last collect, RAM, load average, free space of paths."""

    name = "host"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.procfs = ctx.config.procfs
        self.paths = list(ctx.config.filesystem_paths)
        self._prev_cpu: tuple[float, float] | None = None

    def _psutil(self) -> Any:
        """Return psutil reading the configured procfs."""
        # Imported here so that `sentinel --help`, which lists the collectors, skips it.
        import psutil  # noqa: PLC0415

        # psutil reads /proc through this module global; the agent is its only user.
        psutil.PROCFS_PATH = self.procfs
        return psutil

    def _cpu_times(self) -> tuple[float, float]:
        """Return (busy, total) CPU seconds from <procfs>/stat."""
        t = self._psutil().cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t)
        # guest time is already inside user/nice on Linux; do not count it twice.
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        return total - idle, total

    def collect(self) -> list[MetricFamily]:
        """Read CPU, memory, load and filesystems."""
        busy, total = self._cpu_times()
        prev = self._prev_cpu or (0.0, 0.0)
        self._prev_cpu = (busy, total)
        d_total = total - prev[1]
        cpu = GaugeMetricFamily(
            "sentinel_host_cpu_utilization_ratio", "CPU busy 0..1 since the last collect."
        )
        cpu.add_metric([], max(0.0, min(1.0, (busy - prev[0]) / d_total)) if d_total > 0 else 0.0)

        vm = self._psutil().virtual_memory()
        mem_total = GaugeMetricFamily("sentinel_host_memory_total_bytes", "Total RAM.")
        mem_total.add_metric([], float(vm.total))
        mem_avail = GaugeMetricFamily(
            "sentinel_host_memory_available_bytes", "RAM available without swapping."
        )
        mem_avail.add_metric([], float(vm.available))
        mem_used = GaugeMetricFamily("sentinel_host_memory_used_bytes", "RAM in use.")
        mem_used.add_metric([], float(vm.total - vm.available))

        load = GaugeMetricFamily(
            "sentinel_host_load_average", "Load average.", labels=["period"]
        )
        fields = (Path(self.procfs) / "loadavg").read_text().split()
        for period, v in zip(("1m", "5m", "15m"), fields[:3], strict=True):
            load.add_metric([period], float(v))

        free = GaugeMetricFamily(
            "sentinel_host_filesystem_free_bytes",
            "Free space (for unprivileged users) of the filesystem holding the path.",
            labels=["path"],
        )
        size = GaugeMetricFamily(
            "sentinel_host_filesystem_size_bytes",
            "Size of the filesystem holding the path.",
            labels=["path"],
        )
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
        return [cpu, mem_total, mem_avail, mem_used, load, free, size]
