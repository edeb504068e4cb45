"""The agent's collectors, one file each, registered in :data:`COLLECTORS`.

Adding a collector means adding a file with a :class:`~.base.Collector` subclass (which
declares its ``name`` and ``default_enabled``) and one line here; the config's
``agent.collectors`` names and default, and the ``--collector.NAME`` /
``--no-collector.NAME`` flags, follow from this list. ``sentinel --help`` imports it,
so a collector module imports heavy libraries (NVML) inside its methods.
"""

from __future__ import annotations

from sentinel.agent.collectors.base import Collector
from sentinel.agent.collectors.disk import DiskCollector
from sentinel.agent.collectors.disk_stall import DiskStallCollector
from sentinel.agent.collectors.gpu import GpuCollector
from sentinel.agent.collectors.host import HostCollector
from sentinel.agent.collectors.textfile import TextfileCollector
from sentinel.agent.collectors.training import TrainingCollector

COLLECTORS: list[type[Collector]] = [
    GpuCollector,
    DiskCollector,
    DiskStallCollector,
    HostCollector,
    TrainingCollector,
    TextfileCollector,
]

__all__ = ["COLLECTORS", "Collector"]
