"""The controller's metrics (/metrics) and health (/healthz), in its own registry.

Two kinds of series (docs/METRICS.md, "Controller"):

- what happens, counted by this process from its start (counters and histograms: cycles,
  errors, decisions, incidents opened and ended, time to detect/decide/recover). After
  each cycle :meth:`ControllerMetrics.observe_cycle` reads what the journal gained since
  the previous cycle (new decision rows, incidents whose timestamps moved), so approvals
  and actions that end in their own threads are counted too, each once;
- what is, read from the journal at scrape time (gauges: incidents open, actions by
  state, the breaker, each followed job's goodput and badput).

``/healthz`` answers 503 when no cycle completed within 3 x ``controller.interval_seconds``
(a hung loop: systemd's watchdog restarts it, a load balancer or a person sees it first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sentinel.config import ConfigError, split_hostport
from sentinel.controller.config import ControllerConfig
from sentinel.controller.goodput import CAUSES, incident_times
from sentinel.controller.journal import Journal
from sentinel.controller.model import Incident
from sentinel.httpserve import HttpServer, Limits, Request, Response

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The rules engine's part of a cycle is 0.38 s over 1,024 nodes x 8 GPUs
# (docs/BENCHMARKS.md); Slurm or Prometheus timeouts stretch one to minutes.
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Detection takes a scrape or two to minutes; recovery from a minute (rollback) to hours
# (a swap waiting in the queue).
INCIDENT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0, 86400.0)
# Where a cycle's errors come from (the loop's error lines: "rules: ...", "goodput JOB: ...",
# "FINDING KEY: ...").
ERROR_STAGES = ("rules", "finding", "goodput")
# /healthz fails when no cycle completed within this many intervals.
HEALTH_INTERVALS = 3.0
# Journal rows are read from this long before the previous cycle: an action thread may
# commit a timestamp taken just before the previous read.
SYNC_SLACK_S = 60.0


class _Histogram:
    """Cumulative bucket counts, a sum and a count (no _created series)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += v

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, n in zip((*[repr(float(b)) for b in self.bounds], "+Inf"), self.counts,
                        strict=True):
            acc += n
            out.append((b, float(acc)))
        return out


class ControllerMetrics:
    """Count what the loop does and export it with the journal's state."""

    def __init__(self, journal: Journal, config: ControllerConfig, *, world: Any = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.config = config
        self.world = world
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._started = clock()
        self._started_mono = monotonic()
        self._mark = self._started
        self._decision_id = journal.last_decision_id()
        self._counted: dict[tuple[str, str, float], float] = {}
        self.cycles = 0
        self.last_cycle_mono: float | None = None
        self.last_success: float | None = None
        self.cycle_seconds = _Histogram(CYCLE_BUCKETS)
        # Known stages start at 0 so a rate() of them has data before the first error.
        self.errors: dict[str, int] = dict.fromkeys(ERROR_STAGES, 0)
        self.decisions: dict[tuple[str, str], int] = {}
        self.opened: dict[str, int] = {}
        self.ended: dict[tuple[str, str], int] = {}
        self.times: dict[str, dict[str, _Histogram]] = {"detect": {}, "decide": {}, "recover": {}}
        self.ready_spares: int | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # -- after each cycle ------------------------------------------------------------

    def observe_cycle(self, now: float, stats: Any) -> None:
        """Count a finished cycle (a Controller observer) and what the journal gained."""
        with self._lock:
            self.cycles += 1
            self.last_cycle_mono = self.monotonic()
            self.cycle_seconds.observe(float(stats.seconds))
            for err in stats.errors:
                stage = "rules" if err.startswith("rules:") else \
                    "goodput" if err.startswith("goodput ") else "finding"
                self.errors[stage] = self.errors.get(stage, 0) + 1
            if not stats.errors:
                self.last_success = self.clock()
        self.sync()
        self._read_spares()

    def _read_spares(self) -> None:
        get = getattr(self.world, "ready_spares", None)
        if not callable(get):
            return
        try:
            n = int(get())
        except Exception as e:  # noqa: BLE001 - the scheduler may be away; the gauge goes stale
            log.warning("ready spares: %s", e)
            n = -1
        with self._lock:
            self.ready_spares = n if n >= 0 else None

    def sync(self) -> None:
        """Count the decisions and incident events the journal gained since the last call."""
        now = self.clock()
        lo = self._mark - SYNC_SLACK_S
        decisions = self.journal.decisions_after(self._decision_id)
        incidents = self.journal.incidents(since=lo, limit=100_000)
        with self._lock:
            for row_id, d in decisions:
                key = (str(d.get("action") or "none"), str(d.get("refusal") or "none"))
                self.decisions[key] = self.decisions.get(key, 0) + 1
                self._decision_id = row_id
            for inc in incidents:
                self._see(inc, lo)
            self._counted = {k: t for k, t in self._counted.items()
                             if t >= now - 2 * SYNC_SLACK_S}
            self._mark = now

    def _see(self, inc: Incident, lo: float) -> None:
        times = incident_times(inc)
        for event, ts in (("opened", inc.opened_at), ("decided", inc.decided_at),
                          ("recovered", inc.recovered_at), ("ended", inc.closed_at)):
            if ts is None or ts < lo or ts < self._started or (inc.id, event, ts) in self._counted:
                continue
            if event == "ended" and inc.open:
                continue  # closed, then reopened (a failed action sends it back)
            self._counted[(inc.id, event, ts)] = ts
            if event == "opened":
                self.opened[inc.kind] = self.opened.get(inc.kind, 0) + 1
                self._observe("detect", inc.kind, times.detect)
            elif event == "decided":
                self._observe("decide", inc.kind, times.decide)
            elif event == "recovered":
                self._observe("recover", inc.kind, times.recover)
            else:
                key = (inc.kind, inc.state)
                self.ended[key] = self.ended.get(key, 0) + 1

    def _observe(self, what: str, kind: str, v: float | None) -> None:
        if v is not None:
            self.times[what].setdefault(kind, _Histogram(INCIDENT_BUCKETS)).observe(v)

    # -- serving ---------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): a cycle completed within 3 x the interval."""
        limit = HEALTH_INTERVALS * self.config.interval_seconds
        with self._lock:
            last = self.last_cycle_mono
        age = self.monotonic() - (last if last is not None else self._started_mono)
        if age > limit:
            what = "no cycle completed" if last is None else "the last cycle completed"
            return False, f"{what} {age:.0f} s ago (limit {limit:.0f} s = {HEALTH_INTERVALS:g} " \
                          "x controller.interval_seconds)"
        return True, f"ok: {self.cycles} cycle(s), the last {age:.1f} s ago"

    def render(self) -> bytes:
        """Return the text exposition."""
        return generate_latest(self.registry)

    def serve(self, address: str | None = None) -> HttpServer:
        """Serve /metrics and /healthz on ``address`` (default controller.listen_address)."""
        host, port = split_hostport("controller.listen_address",
                                    address or self.config.listen_address)

        def handle(req: Request) -> Response:
            if req.path == "/metrics":
                return Response(200, self.render(), CONTENT_TYPE)
            if req.path == "/healthz":
                ok, why = self.health()
                return Response(200 if ok else 503, (why + "\n").encode())
            if req.path == "/":
                return Response(200, b"sentinel controller: /metrics /healthz\n")
            return Response(404, f"no such path {req.path!r} (valid: /metrics, /healthz)\n"
                            .encode())

        try:
            # Prometheus (or an HA pair), a person with curl, a health check.
            server = HttpServer(host, port, handle, Limits(max_connections=16, workers=2),
                                name="controller-http")
        except OSError as e:
            raise ConfigError(f"controller.listen_address: cannot listen on {host}:{port} "
                              f"({e.strerror or e}); use a free port, or '' for no metrics"
                              ) from None
        server.start()
        return server


class _Collector:
    """Build every family at scrape time."""

    def __init__(self, m: ControllerMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        yield from self._counted()
        ok = True
        try:
            # Read everything first: a scrape never shows half of the journal's families.
            families = list(self._journal())
        except Exception as e:  # noqa: BLE001 - a locked or broken journal must not break a scrape
            log.warning("metrics: cannot read the journal: %s", e)
            families, ok = [], False
        yield from families
        yield _gauge("sentinel_controller_journal_readable", "1 if this scrape could read the "
                     "journal (0: its series are missing from this scrape).",
                     {(): 1.0 if ok else 0.0})

    def _counted(self) -> Iterator[Metric]:
        m = self.m
        with m._lock:
            yield _counter("sentinel_controller_cycles", "Cycles the loop completed.",
                           {(): m.cycles})
            h = HistogramMetricFamily("sentinel_controller_cycle_duration_seconds",
                                      "Time each cycle took (findings, decisions, goodput).")
            h.add_metric([], m.cycle_seconds.buckets(), m.cycle_seconds.total)
            yield h
            if m.last_success is not None:
                g = GaugeMetricFamily(
                    "sentinel_controller_last_successful_cycle_timestamp_seconds",
                    "When the last cycle without an error ended.")
                g.add_metric([], m.last_success)
                yield g
            yield _counter("sentinel_controller_cycle_errors", "Errors in cycles, by stage "
                           "(rules: the rules engine; finding: handling one finding; goodput).",
                           {(s,): n for s, n in m.errors.items()}, ["stage"])
            yield _counter("sentinel_controller_decisions", "Policy decisions, by action "
                           "('none': nothing to do) and refusal ('none': not refused).",
                           dict(m.decisions), ["action", "refusal"])
            yield _counter("sentinel_controller_incidents_opened", "Incidents opened, by kind.",
                           {(k,): n for k, n in m.opened.items()}, ["kind"])
            yield _counter("sentinel_controller_incidents", "Incidents that ended, by kind and "
                           "outcome (recovered, escalated, resolved).", dict(m.ended),
                           ["kind", "outcome"])
            for what, help_ in (("detect", "From the problem's start to its incident opening."),
                                ("decide", "From the incident opening to its first decision."),
                                ("recover", "From the problem's start to the verified fix "
                                 "(MTTR).")):
                fam = HistogramMetricFamily(f"sentinel_controller_incident_{what}_seconds",
                                            help_, labels=["kind"])
                for kind, hist in sorted(m.times[what].items()):
                    fam.add_metric([kind], hist.buckets(), hist.total)
                yield fam
            if m.ready_spares is not None:
                g = GaugeMetricFamily("sentinel_controller_ready_spares", "Spare nodes ready to "
                                      "swap in (idle, staged, burned in recently).")
                g.add_metric([], float(m.ready_spares))
                yield g

    def _journal(self) -> Iterator[Metric]:
        j = self.m.journal
        open_by_kind: dict[str, int] = {}
        for (kind, _state), n in j.incident_counts(open_only=True).items():
            open_by_kind[kind] = open_by_kind.get(kind, 0) + n
        yield _gauge("sentinel_controller_incidents_open", "Incidents being handled, by kind.",
                     {(k,): n for k, n in open_by_kind.items()}, ["kind"])
        yield _gauge("sentinel_controller_actions", "Actions in the journal (its retention), by "
                     "action, mode and state.", dict(j.action_counts()),
                     ["action", "mode", "state"])
        br = j.breaker()
        yield _gauge("sentinel_controller_breaker_open", "1 while the circuit breaker is open "
                     "(every action paused until `sentinel controller reset-breaker`).",
                     {(): 1.0 if br.open else 0.0})
        yield _gauge("sentinel_controller_breaker_info", "Always 1; `reason` says why the "
                     "breaker is open (empty while it is closed).",
                     {(br.reason if br.open else "",): 1.0}, ["reason"])
        yield from _goodput(j.goodput())


def _goodput(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    ratio = GaugeMetricFamily("sentinel_controller_job_goodput_ratio", "Productive step time "
                              "over wall time since the job's first step record.",
                              labels=["job"])
    productive = GaugeMetricFamily("sentinel_controller_job_productive_seconds",
                                   "Productive step time (falls when a rollback discards "
                                   "steps).", labels=["job"])
    wall = GaugeMetricFamily("sentinel_controller_job_wall_seconds", "Wall time from the "
                             "job's first step record to its newest.", labels=["job"])
    pending = GaugeMetricFamily("sentinel_controller_job_unclassified_seconds", "Pauses not "
                                "yet told apart (checkpoint or stall).", labels=["job"])
    badput = CounterMetricFamily("sentinel_controller_job_badput_seconds", "Lost time, by "
                                 "cause (" + ", ".join(CAUSES) + ").", labels=["job", "cause"])
    last = GaugeMetricFamily("sentinel_controller_job_last_step_timestamp_seconds",
                             "Time of the newest step record accounted.", labels=["job"])
    for r in rows:
        if r["start"] is None or r["last"] is None:
            continue
        w = float(r["last"]) - float(r["start"])
        if w > 0:
            ratio.add_metric([r["job"]], float(r["productive"]) / w)
        productive.add_metric([r["job"]], float(r["productive"]))
        wall.add_metric([r["job"]], w)
        pending.add_metric([r["job"]], float(r["pending"]))
        last.add_metric([r["job"]], float(r["last"]))
        for cause in CAUSES:
            badput.add_metric([r["job"], cause], float(r["badput"].get(cause, 0.0)))
    yield from (ratio, productive, wall, pending, badput, last)


def _gauge(name: str, help_: str, values: Mapping[Any, float],
           labels: Sequence[str] = ()) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, help_, labels=list(labels))
    for lv, v in sorted(values.items()):
        g.add_metric(list(lv), float(v))
    return g


def _counter(name: str, help_: str, values: Mapping[Any, float],
             labels: Sequence[str] = ()) -> CounterMetricFamily:
    c = CounterMetricFamily(name, help_, labels=list(labels))
    for lv, v in sorted(values.items()):
        c.add_metric(list(lv), float(v))
    return c
