"""The agent: run the enabled collectors, render one exposition, report health.

Every collector runs in a worker thread of its own, so a scrape runs them concurrently
and waits for each at most ``agent.collector_timeout_seconds``. Python cannot kill a
thread: a collect that hangs (a wedged NVML call, a ``statvfs`` on a dead NFS mount)
keeps its worker busy, and until it returns the scrapes report that collector as
failed without starting another collect of it. The agent never has more than one
worker thread per collector, whatever its collectors do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from sentinel import __version__
from sentinel.agent.collectors import COLLECTORS, Collector
from sentinel.agent.collectors.base import Context
from sentinel.agent.collectors.training import TrainingCollector
from sentinel.exposition import CounterMetricFamily, GaugeMetricFamily, MetricFamily, render

log = logging.getLogger(__name__)

# Families the agent itself adds to every scrape; a collector may not export these.
AGENT_FAMILIES = ("sentinel_agent_info", "sentinel_collector_success",
                  "sentinel_collector_duration_seconds", "sentinel_collector_timeouts_total")
# How long close() waits for an idle worker thread to exit.
WORKER_JOIN_S = 1.0


class _Scrape:
    """The collects of one scrape; the scrape sleeps until all are done or time is up.

    Handing work to threads is the whole cost this design adds to a scrape, so the
    scrape wakes once, not once per collector, and the hand-offs use raw locks, the
    cheapest wake-up CPython has (Event and Condition allocate a lock per wait).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._left = 1  # the scrape's own share, given up by wait()
        self._all_done = threading.Lock()
        self._all_done.acquire()

    def add(self) -> None:
        """Count one more collect to wait for (before it is handed over)."""
        with self._mutex:
            self._left += 1

    def done_one(self) -> None:
        """Count one collect (or the scrape's own share) as done."""
        with self._mutex:
            self._left -= 1
            last = self._left == 0
        if last:
            self._all_done.release()

    def wait(self, timeout: float) -> bool:
        """Give up the scrape's share and wait up to ``timeout`` s for every collect."""
        self.done_one()
        return self._all_done.acquire(timeout=max(0.0, timeout))


class _Collect:
    """One collect handed to a worker; the worker fills it in, then sets ``done``."""

    def __init__(self, scrape: _Scrape) -> None:
        self.scrape = scrape
        self.families: list[MetricFamily] = []
        self.ok = False
        self.seconds = 0.0
        self.done = False


class CollectorWorker:
    """Run one collector's collects in a thread of its own, one at a time."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.name = collector.name
        self._mutex = threading.Lock()
        self._go = threading.Lock()  # held while idle; released to hand over a collect
        self._go.acquire()
        self._job: _Collect | None = None  # the collect requested or running, if any
        self._since: float | None = None  # when that collect was requested (monotonic)
        self._closed = False
        self._thread: threading.Thread | None = None
        # True from a collect that missed its timeout until one returns in time.
        self.late = False

    def submit(self, scrape: _Scrape) -> _Collect | None:
        """Start a collect for ``scrape``; None while the previous one still runs (or closed)."""
        with self._mutex:
            if self._closed or self._job is not None:
                return None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"sentinel-collect-{self.name}")
                self._thread.start()
            scrape.add()
            job = self._job = _Collect(scrape)
            self._since = time.monotonic()
        self._go.release()
        return job

    def running_for(self) -> float | None:
        """Return how long the current collect has been running, or None when idle."""
        since = self._since
        return None if since is None else time.monotonic() - since

    def _run(self) -> None:
        while True:
            self._go.acquire()
            with self._mutex:
                job = self._job
            if job is None:
                return  # closed while idle
            t0 = time.perf_counter()
            try:
                job.families = list(self.collector.collect())
                job.ok = self.collector.success
            except Exception as e:  # noqa: BLE001 - a collector never breaks a scrape
                log.warning("collector %s failed: %s: %s", self.name, type(e).__name__, e)
                job.families, job.ok = [], False
            job.seconds = time.perf_counter() - t0
            job.done = True
            with self._mutex:
                self._job, self._since = None, None
                closed = self._closed
            job.scrape.done_one()
            if closed:
                return

    def close(self) -> bool:
        """Stop the thread once idle; return False if a collect is still running."""
        with self._mutex:
            was_closed, self._closed = self._closed, True
            busy = self._job is not None
            thread = self._thread
            if thread is not None and not busy and not was_closed:
                self._go.release()  # wakes the idle worker, which sees no job and exits
        if thread is not None and not busy:
            thread.join(WORKER_JOIN_S)
        return not busy


class Agent:
    """The enabled collectors, their workers and bookkeeping (success, duration, timeouts)."""

    def __init__(self, ctx: Context, collectors: list[Collector] | None = None) -> None:
        self.ctx = ctx
        if collectors is None:
            enabled = set(ctx.config.collectors)
            collectors = [cls(ctx) for cls in COLLECTORS if cls.name in enabled]
        self.collectors = collectors
        self.workers = [CollectorWorker(c) for c in collectors]
        self.timeouts = dict.fromkeys((c.name for c in collectors), 0)
        # One scrape at a time: a second one would find every collector busy with the
        # first's collect. Each waits for the other at most one collector timeout.
        self._scrape_lock = threading.Lock()

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
        """Stop the workers and the collectors; errors are logged, never raised."""
        for w in self.workers:
            if not w.close():
                # Closing it under a hung collect could hang too (NVML); the process ends.
                log.warning("collector %s is still collecting; not closing it", w.name)
                continue
            try:
                w.collector.close()
            except Exception:  # noqa: BLE001 - shutting down must finish
                log.exception("closing collector %s", w.name)

    def collect_families(self) -> list[MetricFamily]:
        """Run every collector once, concurrently, each within the collector timeout.

        A collector that fails, or has not returned in time, is reported with
        ``sentinel_collector_success`` 0 and none of its output for this scrape.
        """
        timeout = self.ctx.config.collector_timeout_seconds
        scrape = _Scrape()
        started = [(w, w.submit(scrape)) for w in self.workers]
        scrape.wait(timeout)
        success = GaugeMetricFamily(
            "sentinel_collector_success",
            "1 if the collector's last collect worked in time, 0 if it failed, timed out "
            "or is absent.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "sentinel_collector_duration_seconds",
            "Time the last collect took; while one is overdue, how long it has been running.",
            labels=["collector"],
        )
        timeouts = CounterMetricFamily(
            "sentinel_collector_timeouts",
            "Scrapes that left the collector out because its collect had not returned "
            "within agent.collector_timeout_seconds.",
            labels=["collector"],
        )
        info = GaugeMetricFamily(
            "sentinel_agent_info", "The agent build.", labels=["version", "hostname"]
        )
        info.add_metric([__version__, self.ctx.hostname], 1.0)
        out: list[MetricFamily] = [info, success, duration, timeouts]
        seen: set[str] = set(AGENT_FAMILIES)
        for w, job in started:
            if job is not None and job.done:
                self._on_time(w)
                duration.add_metric([w.name], job.seconds)
                success.add_metric([w.name], 1.0 if job.ok else 0.0)
                out.extend(self._unique(w.name, job.families, seen))
            else:
                running = w.running_for()
                self._overdue(w, timeout, running)
                duration.add_metric([w.name], timeout if running is None else running)
                success.add_metric([w.name], 0.0)
            timeouts.add_metric([w.name], float(self.timeouts[w.name]))
        return out

    def _on_time(self, w: CollectorWorker) -> None:
        if w.late:
            log.info("collector %s returns in time again", w.name)
            w.late = False

    def _overdue(self, w: CollectorWorker, timeout: float, running: float | None) -> None:
        self.timeouts[w.name] += 1
        if not w.late:
            log.warning("collector %s has not returned within %.1fs (running for %.1fs): "
                        "left out of the scrape until it does", w.name, timeout,
                        timeout if running is None else running)
        w.late = True

    @staticmethod
    def _unique(name: str, families: list[MetricFamily], seen: set[str]) -> Iterator[MetricFamily]:
        """Yield the families whose names no collector has used yet in this scrape."""
        for f in families:
            if f.name in seen:
                log.warning("collector %s: duplicate family %s dropped", name, f.name)
                continue
            seen.add(f.name)
            yield f

    def render(self) -> bytes:
        """Collect everything and return the text exposition (one scrape at a time)."""
        with self._scrape_lock:
            return render(self.collect_families())

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): readers alive and no collect stuck too long."""
        stall = self.ctx.config.collect_stall_seconds
        for w in self.workers:
            running = w.running_for()
            if running is not None and running > stall:
                return False, f"collector {w.name} has been collecting for {running:.0f}s"
        tr = self.training
        if tr is not None and not tr.healthy():
            return False, "a report socket reader thread died"
        return True, "ok"
