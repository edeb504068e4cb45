"""The spare pool and the cluster as the policy sees it, from Slurm and the journal.

A spare is *ready* when all of these hold (one definition, used by the policy's world
snapshot and by spare_swap's choice):

- it has the feature ``controller.spare_feature`` (an operator sets it once the job's
  dataset is staged there) and is in ``controller.spare_partition`` if one is set;
- it is idle with no state flag (not drained, down, reserved, in maintenance, ...);
- it is in no reservation (one that has not started yet included);
- it passed a burn-in within ``controller.burnin_max_age_hours``: a burn-in sentinel ran
  and settled (the journal), or one the node's agent exported
  (``sentinel_burnin_ok`` == 1 on every GPU and ``sentinel_burnin_timestamp_seconds``
  recent enough, when ``controller.prometheus_url`` is set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sentinel.controller.actions.burnin import burnin_passes
from sentinel.controller.slurm import Job, Node, Slurm, SlurmError

if TYPE_CHECKING:
    from sentinel.controller.config import ControllerConfig, JobSpec
    from sentinel.controller.journal import Journal
    from sentinel.rules.finding import Finding

log = logging.getLogger(__name__)

# The burn-in gauges are two instant queries; a slow Prometheus must not hold a decision.
PROM_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SpareStatus:
    """One node of the spare pool: ready or not, and why."""

    node: str
    ready: bool
    why: str
    burned_in_at: float | None = None


def prometheus_passes(url: str, since: float, timeout: float = PROM_TIMEOUT_S
                      ) -> dict[str, float]:
    """Return ``{hostname: time}`` of burn-ins the agents export as passed since ``since``."""
    from sentinel.rules.sources import PrometheusSource

    prom = PrometheusSource(url, timeout=timeout)

    def by_host(promql: str) -> dict[str, float]:
        return {labels["hostname"]: v for labels, v in prom.instant(promql)
                if labels.get("hostname")}

    # Every GPU of the host passed (min of ok is 1), and the oldest GPU result is recent.
    ok = by_host("min by (hostname) (sentinel_burnin_ok)")
    ts = by_host("min by (hostname) (sentinel_burnin_timestamp_seconds)")
    return {h: t for h, t in ts.items() if ok.get(h) == 1.0 and t >= since}


class SparePool:
    """Which nodes can take a failed node's place, from Slurm, the journal and Prometheus."""

    def __init__(self, slurm: Slurm, journal: Journal, config: ControllerConfig,
                 clock: Callable[[], float]) -> None:
        self.slurm = slurm
        self.journal = journal
        self.config = config
        self.clock = clock

    def _passes(self, nodes: dict[str, Node], now: float) -> dict[str, float]:
        since = now - self.config.burnin_max_age_hours * 3600.0
        passes = burnin_passes(self.journal, since)
        if self.config.prometheus_url:
            try:
                exported = prometheus_passes(self.config.prometheus_url, since)
            except Exception as e:  # noqa: BLE001 - the journal still answers
                log.warning("spare pool: cannot read burn-ins from Prometheus: %s", e)
                exported = {}
            for n in nodes.values():
                t = exported.get(n.hostname) or exported.get(n.name)
                if t is not None:
                    passes[n.name] = max(passes.get(n.name, 0.0), t)
        return passes

    def status(self, nodes: dict[str, Node] | None = None) -> list[SpareStatus]:
        """Return every node of the pool (feature and partition), ready or why not."""
        now = self.clock()
        nodes = self.slurm.nodes() if nodes is None else nodes
        reserved: dict[str, str] = {}
        for r in self.slurm.reservations().values():
            for name in r.nodes:
                reserved.setdefault(name, r.name)
        passes = self._passes(nodes, now)
        feature, part = self.config.spare_feature, self.config.spare_partition
        out = []
        for n in sorted(nodes.values(), key=lambda n: n.name):
            if feature not in n.features or (part and part not in n.partitions):
                continue
            at = passes.get(n.name)
            if not n.free:
                why = f"not free ({n.describe()})"
            elif n.name in reserved:
                why = f"in reservation {reserved[n.name]}"
            elif at is None:
                why = f"no burn-in passed in the last {self.config.burnin_max_age_hours:g} h"
            else:
                why = "ready"
            out.append(SpareStatus(n.name, why == "ready", why, at))
        return out

    def ready(self, exclude: Iterable[str] = (),
              nodes: dict[str, Node] | None = None) -> list[SpareStatus]:
        """Return the ready spares, freshest burn-in first."""
        skip = set(exclude)
        ready = [s for s in self.status(nodes) if s.ready and s.node not in skip]
        return sorted(ready, key=lambda s: (-(s.burned_in_at or 0.0), s.node))


def job_on_node(slurm: Slurm, jobs: dict[str, JobSpec], node: str,
                prefer: str | None = None) -> tuple[JobSpec, Job] | None:
    """Return the followed job running on ``node`` (``prefer`` looked at first), if any."""
    specs = sorted(jobs.values(), key=lambda s: s.name != prefer)
    for spec in specs:
        j = slurm.job(spec.slurm_job or spec.name)
        if j is not None and j.running and node in j.nodes:
            return spec, j
    return None


class SlurmWorld:
    """``loop.World`` from Slurm and the journal: cluster size, ready spares, node in job."""

    def __init__(self, slurm: Slurm, journal: Journal, config: ControllerConfig,
                 jobs: dict[str, JobSpec], clock: Callable[[], float] = time.time) -> None:
        self.slurm = slurm
        self.jobs = jobs
        self.pool = SparePool(slurm, journal, config, clock)

    def ready_spares(self) -> int:
        """Return how many spares are ready now (the controller's metric; raises SlurmError)."""
        return len(self.pool.ready())

    def snapshot(self, finding: Finding) -> dict[str, Any]:
        """Return ``nodes_total``, ``ready_spares`` (-1 unknown) and ``node_in_job``."""
        try:
            nodes = self.slurm.nodes()
            ready = self.pool.ready(exclude=[finding.node] if finding.node else [], nodes=nodes)
            in_job = bool(finding.node) and job_on_node(
                self.slurm, self.jobs, str(finding.node), finding.job) is not None
        except SlurmError as e:
            log.warning("world snapshot: Slurm did not answer: %s", e)
            return {"nodes_total": 0, "ready_spares": -1, "node_in_job": False,
                    "error": str(e)}
        return {"nodes_total": len(nodes), "ready_spares": len(ready), "node_in_job": in_job,
                "spares": [s.node for s in ready]}
