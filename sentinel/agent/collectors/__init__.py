"""The agent's collectors, one file each, registered in :data:`COLLECTORS`.

Adding a collector means adding a file with a :class:`~.base.Collector` subclass and
one line here; ``--collector.NAME`` / ``--no-collector.NAME`` and the config's
``agent.collectors`` choices follow from this list.
"""

from __future__ import annotations

from sentinel.agent.collectors.base import Collector
from sentinel.agent.collectors.disk import DiskCollector
from sentinel.agent.collectors.gpu import GpuCollector
from sentinel.agent.collectors.host import HostCollector
from sentinel.agent.collectors.textfile import TextfileCollector
from sentinel.agent.collectors.training import TrainingCollector

COLLECTORS: list[type[Collector]] = [
    GpuCollector,
    DiskCollector,
    HostCollector,
    TrainingCollector,
    TextfileCollector,
]

__all__ = ["COLLECTORS", "Collector"]
