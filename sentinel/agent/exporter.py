"""The agent: run the enabled collectors, render one exposition, report health.

A scrape hands all its collects to one runner thread, which runs them one after
another, and waits for them at most ``agent.collector_timeout_seconds``. A collect that
runs longer than :data:`INLINE_LIMIT_S` (healthy ones take milliseconds) leaves the
collects queued behind it to another runner, so a slow or hung collector delays the
others by that much at most and slow ones still run concurrently. Python cannot kill
a thread: a collect that hangs (a wedged NVML call, a ``statvfs`` on a dead NFS mount)
keeps its runner, and until it returns the scrapes report that collector as failed
without starting another collect of it. So the agent has at most one thread per
collector whose collect is running, plus :data:`IDLE_RUNNERS` idle ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from sentinel import __version__
from sentinel.agent.collectors import COLLECTORS, Collector
from sentinel.agent.collectors.base import Context
from sentinel.agent.collectors.disk_stall import DiskStallCollector
from sentinel.agent.collectors.gpu import GpuCollector
from sentinel.agent.collectors.training import TrainingCollector
from sentinel.agent.nodestream import NodeRing, NodeSampler
from sentinel.exposition import (
    CounterMetricFamily,
    GaugeMetricFamily,
    LabelSet,
    MetricFamily,
    Sample,
    render,
)

log = logging.getLogger(__name__)

# Families the agent itself adds to every scrape; a collector may not export these.
AGENT_FAMILIES = ("sentinel_agent_info", "sentinel_collector_success",
                  "sentinel_collector_duration_seconds", "sentinel_collector_timeouts_total")
# How long close() waits for an idle runner thread to exit.
WORKER_JOIN_S = 1.0
# How long one collect may hold up those queued behind it on the scrape's runner before
# another runner takes them (a quarter of the collector timeout when that is shorter).
# A thread per collector cost ~70 us of CPU per collector per scrape on the 2-core VM
# (waking threads that then pass the GIL back and forth at every read); healthy
# collects take 0.05-2 ms, so one runner serves them all.
INLINE_LIMIT_S = 0.1
# Runner threads kept idle for the next scrape; more exit when their collect ends.
IDLE_RUNNERS = 1


class ScrapePhases(NamedTuple):
    """Where the last scrape's time went, in seconds of wall time (perf_counter)."""

    collect: float  # handing the collects over until the last is done (or timed out)
    agent: float  # the agent's own families and its bookkeeping
    render: float  # writing the exposition


class _Collect:
    """One collect of one collector for one scrape; its runner fills it in."""

    __slots__ = ("slot", "families", "ok", "seconds", "done")

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.families: list[MetricFamily] = []
        self.ok = False
        self.seconds = 0.0
        self.done = False


class _Slot:
    """One collector and its collect in progress, if any (guarded by the pool's mutex)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.name = collector.name
        # Its label set in the agent's own families, the same every scrape.
        self.labels = LabelSet([("collector", collector.name)])
        self.job: _Collect | None = None  # requested or running
        self.since: float | None = None  # when that collect was requested (monotonic)
        # True from a collect that missed its timeout until one returns in time.
        self.late = False

    def running_for(self) -> float | None:
        """Return how long the current collect has been running, or None when idle."""
        since = self.since
        return None if since is None else time.monotonic() - since


class _Scrape:
    """The collects of one scrape: a queue its runners take from, and one wake-up.

    The scrape sleeps on a raw lock released when the last collect is done: the
    cheapest wake-up CPython has (Event and Condition allocate a lock per wait).
    """

    def __init__(self, jobs: list[_Collect]) -> None:
        self.queue = deque(jobs)  # not started yet
        self.left = len(jobs)  # not done yet
        self.runners: list[_Runner] = []
        self.all_done = threading.Lock()
        self.all_done.acquire()


class _Runner:
    """A thread that runs the queued collects of the scrape it is handed, in order."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.go = threading.Lock()  # held while idle; released to hand over a scrape
        self.go.acquire()
        self.scrape: _Scrape | None = None
        self.current: _Collect | None = None
        self.current_since = 0.0
        # Named after the collector it runs (or ran last), so a hung one shows by name.
        self.thread = threading.Thread(target=self._run, daemon=True, name="sentinel-collect")

    def _run(self) -> None:
        while True:
            self.go.acquire()
            scrape = self.scrape
            if scrape is None:
                return  # closed while idle
            while (job := self._next(scrape)) is not None:
                self._collect(scrape, job)
            if not self.pool.park(self):
                return

    def _next(self, scrape: _Scrape) -> _Collect | None:
        with self.pool.mutex:
            if not scrape.queue:
                return None
            job = self.current = scrape.queue.popleft()
            self.current_since = time.monotonic()
        return job

    def _collect(self, scrape: _Scrape, job: _Collect) -> None:
        slot = job.slot
        self.thread.name = f"sentinel-collect-{slot.name}"
        t0 = time.perf_counter()
        try:
            job.families = list(slot.collector.collect())
            job.ok = slot.collector.success
        except Exception as e:  # noqa: BLE001 - a collector never breaks a scrape
            log.warning("collector %s failed: %s: %s", slot.name, type(e).__name__, e)
            job.families, job.ok = [], False
        job.seconds = time.perf_counter() - t0
        with self.pool.mutex:
            job.done = True
            slot.job, slot.since = None, None
            self.current = None
            scrape.left -= 1
            last = scrape.left == 0
        if last:
            scrape.all_done.release()


class _Pool:
    """The runner threads: at most one per running collect, plus IDLE_RUNNERS idle."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.idle: list[_Runner] = []
        self.closed = False

    def hand(self, scrape: _Scrape) -> None:
        """Give ``scrape`` one more runner (call with the mutex held)."""
        r = self.idle.pop() if self.idle else None
        if r is None:
            r = _Runner(self)
            r.thread.start()
        r.scrape = scrape
        scrape.runners.append(r)
        r.go.release()

    def park(self, r: _Runner) -> bool:
        """Keep ``r`` for the next scrape; False when it should exit instead."""
        with self.mutex:
            r.scrape = None
            if self.closed or len(self.idle) >= IDLE_RUNNERS:
                return False
            self.idle.append(r)
            return True

    def close(self) -> None:
        """Stop the idle runners; busy ones exit when their collect returns."""
        with self.mutex:
            self.closed = True
            idle, self.idle = self.idle, []
        for r in idle:
            r.go.release()  # wakes it with no scrape: it exits
        for r in idle:
            r.thread.join(WORKER_JOIN_S)


def _agent_families(hostname: str) -> tuple[
        MetricFamily, tuple[MetricFamily, MetricFamily, MetricFamily]]:
    """Return the agent's info family and its (success, duration, timeouts) families.

    Built once per agent: the info sample never changes, the others are reset and
    filled every scrape (one scrape at a time).
    """
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
    info.add_metric([__version__, hostname], 1.0)
    return info, (success, duration, timeouts)


class Agent:
    """The enabled collectors, their runners and bookkeeping (success, duration, timeouts)."""

    def __init__(self, ctx: Context, collectors: list[Collector] | None = None) -> None:
        self.ctx = ctx
        if collectors is None:
            enabled = set(ctx.config.collectors)
            collectors = [cls(ctx) for cls in COLLECTORS if cls.name in enabled]
        self.collectors = collectors
        self.slots = [_Slot(c) for c in collectors]
        self._pool = _Pool()
        self.timeouts = dict.fromkeys((c.name for c in collectors), 0)
        # One scrape at a time: a second one would find every collector busy with the
        # first's collect. Each waits for the other at most one collector timeout.
        self._scrape_lock = threading.Lock()
        # What the node saw each second, served with the step stream (/api/v1/node).
        self.node_ring = NodeRing()
        self.node_sampler: NodeSampler | None = None
        # The last render()'s phases (bench/agent_overhead.py prints them); three clock
        # reads a scrape.
        self.phases = ScrapePhases(0.0, 0.0, 0.0)
        self._collected = 0.0  # perf_counter when the last scrape's collects were in
        self._info, self._own = _agent_families(ctx.hostname)

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
        """Start every collector's background work, and the node records' sampler."""
        for c in self.collectors:
            c.start()
        self.node_sampler = self._node_sampler()
        if self.node_sampler is not None:
            self.node_sampler.start()

    def _node_sampler(self) -> NodeSampler | None:
        """Return the per-second node sampler, if there are steps and something to sample."""
        tr = self.training
        disk = self.collector("disk_stall")
        gpu = self.collector("gpu")
        if tr is None or (disk is None and gpu is None):
            return None
        store = tr.store
        return NodeSampler(
            self.node_ring,
            disk=disk.latest if isinstance(disk, DiskStallCollector) else None,
            gpus=gpu.quick if isinstance(gpu, GpuCollector) else None,
            active=lambda: bool(store.jobs), now=self.ctx.now)

    def close(self) -> None:
        """Stop the runners and the collectors; errors are logged, never raised."""
        if self.node_sampler is not None:
            self.node_sampler.close()  # before the collectors it reads close
        self._pool.close()
        for slot in self.slots:
            if slot.job is not None:
                # Closing it under a hung collect could hang too (NVML); the process ends.
                log.warning("collector %s is still collecting; not closing it", slot.name)
                continue
            try:
                slot.collector.close()
            except Exception:  # noqa: BLE001 - shutting down must finish
                log.exception("closing collector %s", slot.name)

    def _run(self, timeout: float) -> list[tuple[_Slot, _Collect | None]]:
        """Run a collect of every idle collector; return each slot's, done or not."""
        start = time.monotonic()
        pool = self._pool
        with pool.mutex:
            jobs: list[tuple[_Slot, _Collect | None]] = []
            for slot in self.slots:
                job = None
                if slot.job is None and not pool.closed:
                    job = slot.job = _Collect(slot)
                    slot.since = start
                jobs.append((slot, job))
            scrape = _Scrape([j for _, j in jobs if j is not None])
            if scrape.left:
                pool.hand(scrape)
            started = scrape.left
        if started:
            self._wait(scrape, start + timeout, min(INLINE_LIMIT_S, timeout / 4))
        with pool.mutex:
            for job in scrape.queue:  # never started: not running, just not in time
                job.slot.job, job.slot.since = None, None
            scrape.queue.clear()
        return jobs

    def _wait(self, scrape: _Scrape, deadline: float, limit: float) -> None:
        """Wait for the scrape's collects until ``deadline``; add a runner when one is slow.

        While collects are queued, a runner is added each time the newest collect
        started has run ``limit`` seconds (the queue waits behind a slow one).
        """
        pool = self._pool
        while True:
            with pool.mutex:
                newest = max((r.current_since for r in scrape.runners if r.current), default=None)
                queued = bool(scrape.queue)
                now = time.monotonic()
                if queued and newest is not None and now - newest >= limit and all(
                        r.current for r in scrape.runners):
                    pool.hand(scrape)
                    newest = now
            if now >= deadline:
                return
            until = deadline if not queued else min(deadline, (newest or now) + limit)
            if scrape.all_done.acquire(timeout=max(0.0, until - now)):
                return

    def collect_families(self) -> list[MetricFamily]:
        """Run every collector once, within the collector timeout.

        A collector that fails, or has not returned in time, is reported with
        ``sentinel_collector_success`` 0 and none of its output for this scrape.
        One call at a time (``render`` holds the scrape lock): the agent's own families
        are kept and filled again by each call.
        """
        timeout = self.ctx.config.collector_timeout_seconds
        started = self._run(timeout)
        self._collected = time.perf_counter()
        success, duration, timeouts = self._own
        for f in self._own:
            f.reset()
        out: list[MetricFamily] = [self._info, success, duration, timeouts]
        seen: set[str] = set(AGENT_FAMILIES)
        ok, dur, tmo = success.samples.append, duration.samples.append, timeouts.samples.append
        for w, job in started:
            if job is not None and job.done:
                self._on_time(w)
                dur(Sample(duration.name, w.labels, job.seconds))
                ok(Sample(success.name, w.labels, 1.0 if job.ok else 0.0))
                out.extend(self._unique(w.name, job.families, seen))
            else:
                running = w.running_for()
                self._overdue(w, timeout, running)
                dur(Sample(duration.name, w.labels, timeout if running is None else running))
                ok(Sample(success.name, w.labels, 0.0))
            tmo(Sample(timeouts.name, w.labels, float(self.timeouts[w.name])))
        return out

    def _on_time(self, w: _Slot) -> None:
        if w.late:
            log.info("collector %s returns in time again", w.name)
            w.late = False

    def _overdue(self, w: _Slot, timeout: float, running: float | None) -> None:
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
            t0 = time.perf_counter()
            families = self.collect_families()
            t1 = time.perf_counter()
            body = render(families)
            t2 = time.perf_counter()
            self.phases = ScrapePhases(self._collected - t0, t1 - self._collected, t2 - t1)
            return body

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): readers alive and no collect stuck too long."""
        stall = self.ctx.config.collect_stall_seconds
        for w in self.slots:
            running = w.running_for()
            if running is not None and running > stall:
                return False, f"collector {w.name} has been collecting for {running:.0f}s"
        tr = self.training
        if tr is not None and not tr.healthy():
            return False, "a report socket reader thread died"
        return True, "ok"
