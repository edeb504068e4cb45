"""The agent: run the enabled collectors, render one exposition, report health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from sentinel import __version__
from sentinel.agent.collectors import COLLECTORS, Collector
from sentinel.agent.collectors.base import Context
from sentinel.agent.collectors.training import TrainingCollector

log = logging.getLogger(__name__)


class _Adapter:
    """Let prometheus_client's registry pull families from the agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        yield from self.agent.collect_families()


class Agent:
    """The enabled collectors plus their bookkeeping (success, duration, stalls)."""

    def __init__(self, ctx: Context, collectors: list[Collector] | None = None) -> None:
        self.ctx = ctx
        if collectors is None:
            enabled = set(ctx.config.collectors)
            collectors = [cls(ctx) for cls in COLLECTORS if cls.name in enabled]
        self.collectors = collectors
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Adapter(self))
        self._collect_lock = threading.Lock()
        self._collect_started: float | None = None
        self.last_collect_seconds = 0.0

    def collector(self, name: str) -> Collector | None:
        """Return the running collector called ``name``, if enabled."""
        for c in self.collectors:
            if c.name == name:
                return c
        return None

    @property
    def training(self) -> TrainingCollector | None:
        """Return the training collector (its store serves the step stream)."""
        c = self.collector("training")
        return c if isinstance(c, TrainingCollector) else None

    def start(self) -> None:
        """Start every collector's background work."""
        for c in self.collectors:
            c.start()

    def close(self) -> None:
        """Stop every collector; errors are logged, never raised."""
        for c in self.collectors:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - shutting down must finish
                log.exception("closing collector %s", c.name)

    def collect_families(self) -> list[Metric]:
        """Run every collector once; failures become sentinel_collector_success 0."""
        success = GaugeMetricFamily(
            "sentinel_collector_success",
            "1 if the collector's last collect worked, 0 if it failed or is absent.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "sentinel_collector_duration_seconds", "Time the last collect took.",
            labels=["collector"],
        )
        info = GaugeMetricFamily(
            "sentinel_agent_info", "The agent build.", labels=["version", "hostname"]
        )
        info.add_metric([__version__, self.ctx.hostname], 1.0)
        out: list[Metric] = [info, success, duration]
        seen: set[str] = {"sentinel_agent_info", "sentinel_collector_success",
                          "sentinel_collector_duration_seconds"}
        for c in self.collectors:
            t0 = time.perf_counter()
            try:
                fams = c.collect()
                ok = c.success
            except Exception as e:  # noqa: BLE001 - a collector never breaks a scrape
                log.warning("collector %s failed: %s: %s", c.name, type(e).__name__, e)
                fams, ok = [], False
            duration.add_metric([c.name], time.perf_counter() - t0)
            success.add_metric([c.name], 1.0 if ok else 0.0)
            for f in fams:
                if f.name in seen:
                    log.warning("collector %s: duplicate family %s dropped", c.name, f.name)
                    continue
                seen.add(f.name)
                out.append(f)
        return out

    def render(self) -> bytes:
        """Collect everything and return the text exposition (one collect at a time)."""
        with self._collect_lock:
            self._collect_started = time.monotonic()
            try:
                t0 = time.perf_counter()
                body: bytes = generate_latest(self._registry)
                self.last_collect_seconds = time.perf_counter() - t0
                return body
            finally:
                self._collect_started = None

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): readers alive and no collect stuck too long."""
        started = self._collect_started
        if started is not None:
            stuck = time.monotonic() - started
            if stuck > self.ctx.config.collect_stall_seconds:
                return False, f"a collect has been running for {stuck:.0f}s"
        tr = self.training
        if tr is not None and not tr.healthy():
            return False, "a report socket reader thread died"
        return True, "ok"

    def describe(self) -> dict[str, Any]:
        """Return what is running (for logs and the demo)."""
        return {"collectors": [c.name for c in self.collectors]}
