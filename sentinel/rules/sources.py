"""Where windows come from: Prometheus (cluster series) and the agent step stream."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from sentinel.jsonnum import decode_number
from sentinel.rules.jsonl import InputError, node_record
from sentinel.rules.rulefile import Rule
from sentinel.rules.window import NodePoint, Series, StepPoint, Window

# Records kept per job between cycles; the agent's own ring is 20,000 per job.
STEP_CACHE = 20000
HTTP_TIMEOUT_S = 10.0
# A poll that brings nothing new reads the whole ring to look for a rolled-back job's
# repeated steps; at most this often, so a stalled or finished job (kept by the agent for
# an hour) costs one full read a minute, not one per cycle.
ROLLBACK_PROBE_S = 60.0
# The agent answers at most 5000 records a page and holds at most ~1M records in all
# (its step rings are capped at 64 MiB): a read of a whole ring is ~200 pages at most.
MAX_PAGES = 256
# Node records kept per job (one a second): 15 minutes, as the agent keeps them.
NODE_CACHE = 900
# An agent without /api/v1/node (an older version) is asked again this often: upgraded
# in place, it serves them without the engine restarting.
NODE_RETRY_S = 300.0


class SourceError(RuntimeError):
    """A source could not answer; the message says which query and why."""


def _nonneg(v: Any) -> float | None:
    """Return a step record's count or seconds (a number >= 0), or None when it has none."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
        return None
    return float(v)


def _batch(v: Any) -> int | None:
    """Return a step record's batch index: an integer >= 0, or None (not reported)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"batch {v!r} is not a batch index (valid: an integer >= 0 or null)")
    return v


class PrometheusSource:
    """Range queries through prometheus-api-client (one per series role of a rule)."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT_S) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url
        self.timeout = timeout
        self._prom = PrometheusConnect(url=url, disable_ssl=True)
        self.queries = 0
        self._lock = threading.Lock()

    def range(self, promql: str, start: float, end: float, step_s: float) -> list[Series]:
        """Run one range query and return its series."""
        try:
            result = self._prom.custom_query_range(
                promql,
                start_time=datetime.fromtimestamp(start, UTC),
                end_time=datetime.fromtimestamp(end, UTC),
                step=f"{step_s:g}s",
                timeout=int(self.timeout),
            )
        except Exception as e:  # noqa: BLE001 - the client raises several types
            raise SourceError(f"Prometheus {self.url}: query {promql!r} failed: {e}") from e
        with self._lock:
            self.queries += 1
        # Prometheus sends every sample value as a string ("1.5", "+Inf", "NaN"): its own
        # format, which float() reads, not sentinel's JSON spelling (sentinel.jsonnum).
        return [
            Series(labels=dict(r.get("metric", {})),
                   points=[(float(t), float(v)) for t, v in r.get("values", [])])
            for r in result
        ]

    def instant(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Run one instant query (now); return each series' labels and value."""
        try:
            result = self._prom.custom_query(promql, timeout=int(self.timeout))
        except Exception as e:  # noqa: BLE001 - the client raises several types
            raise SourceError(f"Prometheus {self.url}: query {promql!r} failed: {e}") from e
        with self._lock:
            self.queries += 1
        # Values are Prometheus' strings ("1", "+Inf"), which float() reads (see range()).
        return [(dict(r.get("metric", {})), float(r["value"][1])) for r in result]

    def window(self, rule: Rule, now: float) -> Window:
        """Fetch every series role of ``rule`` over its window ending at ``now``."""
        start = now - rule.window_s
        series = {role: self.range(q, start, now, rule.step_s) for role, q in rule.series.items()}
        return Window(job=rule.job or "", series=series, now=now, step_s=rule.step_s,
                      range_s=rule.window_s)


class StepStream:
    """Follow one job's steps through the agent's ``/api/v1/steps`` (bounded cache).

    Each poll asks for the steps from the newest step seen, that step included, because
    the ranks of a job report the same step at slightly different moments: asking from
    the step after would lose a rank that reported it after the previous poll. Records
    are told apart by (step, rank, time). A job rolled back to an earlier checkpoint
    reports steps it already reported, which a ``since`` query cannot see; when a poll
    brings nothing new (or a step seen before comes again with a new time) the stream
    reads the agent's whole ring for the job, at most once per ``probe_interval_s``,
    and appends the records newer than the newest seen, so the detectors see the steps
    go back (``loss_spike`` treats that as a resume).
    """

    def __init__(self, agent_url: str, job: str, timeout: float = HTTP_TIMEOUT_S,
                 session: requests.Session | None = None,
                 probe_interval_s: float = ROLLBACK_PROBE_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.url = agent_url.rstrip("/") + "/api/v1/steps"
        self.job = job
        self.timeout = timeout
        self.session = session or requests.Session()
        self.steps: deque[StepPoint] = deque(maxlen=STEP_CACHE)
        self.probe_interval_s = probe_interval_s
        self.monotonic = monotonic
        self._since = 0
        # Keys (step, rank, time) of the records at step ``_since``: the only ones a
        # poll returns again. Bounded by the agent's ranks per job.
        self._at_since: set[tuple[int, Any, Any]] = set()
        self._newest_time: float | None = None
        # When the current timeline began (its first record, after the newest go-back):
        # the agent's ring keeps abandoned timelines, whose records are older than this.
        self._floor: float | None = None
        self._last_probe: float | None = None
        # Several rules may read the same stream from the engine's fetch threads.
        self._lock = threading.Lock()
        # What the agent's node saw each second (/api/v1/node), newest time seen, and
        # until when not to ask an agent that does not serve them.
        self.node_url = agent_url.rstrip("/") + "/api/v1/node"
        self.nodes: deque[NodePoint] = deque(maxlen=NODE_CACHE)
        self._node_since = 0.0
        self._node_off_until: float | None = None
        # The evaluation time last polled for: the rules of one evaluation (same ``now``)
        # share one poll of each endpoint rather than one per rule.
        self._polled_for: float | None = None
        self._poll_lock = threading.Lock()

    def _get(self, since: int) -> list[dict[str, Any]]:
        """Return the agent's records with step >= since, following its pages."""
        steps: list[dict[str, Any]] = []
        params = {"job": self.job, "since": str(since)}
        for _ in range(MAX_PAGES):
            body = self._page(params)
            steps.extend(body["steps"])
            nxt = body.get("next")
            if nxt is None:  # the last page (or an agent that does not page)
                return steps
            params["cursor"] = nxt
        raise SourceError(f"agent {self.url}?job={self.job}: still more steps after "
                          f"{MAX_PAGES} pages")

    def _page(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            r = self.session.get(self.url, params=params, timeout=self.timeout)
        except requests.RequestException as e:
            raise SourceError(f"agent {self.url}: {e}") from e
        if r.status_code != 200:
            raise SourceError(f"agent {self.url}?job={self.job}: HTTP {r.status_code}: "
                              f"{r.text[:200]}")
        try:
            body = r.json()
            steps, nxt = body.get("steps", []), body.get("next")
        except (ValueError, AttributeError) as e:
            raise SourceError(f"agent {self.url}?job={self.job}: not a JSON step list "
                              f"({e})") from e
        if not isinstance(steps, list) or not (nxt is None or isinstance(nxt, str)):
            raise SourceError(f"agent {self.url}?job={self.job}: not a step page "
                              f"(steps: a list, next: a string or null): {r.text[:200]}")
        return {"steps": steps, "next": nxt}

    def _point(self, rec: dict[str, Any]) -> StepPoint:
        try:
            gn = rec.get("grad_norm")
            return StepPoint(
                step=int(rec["step"]), loss=decode_number(rec["loss"]),
                grad_norm=None if gn is None else decode_number(gn),
                time=float(rec["time"]) if rec.get("time") is not None else None,
                node=rec.get("host"), rank=rec.get("rank"), batch=_batch(rec.get("batch")),
                tokens=_nonneg(rec.get("tokens")), data_s=_nonneg(rec.get("data_s")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"agent {self.url}?job={self.job}: bad step record {rec!r} "
                              f"({e!r})") from e

    def _append(self, points: list[StepPoint]) -> None:
        for p in points:
            self.steps.append(p)
            if p.time is not None and (self._newest_time is None or p.time > self._newest_time):
                self._newest_time = p.time
            if p.step > self._since:
                self._since, self._at_since = p.step, set()
            if p.step == self._since:
                self._at_since.add((p.step, p.rank, p.time))

    def poll(self) -> int:
        """Fetch steps not seen yet (including a rolled-back job's repeats); return how many."""
        with self._lock:
            points = self._current(self._point(rec) for rec in self._get(self._since))
            new = [p for p in points if (p.step, p.rank, p.time) not in self._at_since]
            # A step seen before, reported again with another time: the job went back.
            repeated = any((p.step, p.rank) == (k[0], k[1])
                           for p in new for k in self._at_since)
            now = self.monotonic()
            if (repeated or not new) and self._newest_time is not None and (
                    self._last_probe is None
                    or now - self._last_probe >= self.probe_interval_s or repeated):
                self._last_probe = now
                newest = self._newest_time
                after = [self._point(rec) for rec in self._get(0)]
                after = [p for p in after if p.time is not None and p.time > newest]
                if after:
                    if min(p.step for p in after) < self._since:
                        # The job went back: the rerun's steps (the agent orders them by
                        # step, rank) restart the bookkeeping, and what came before them
                        # is an abandoned timeline from now on.
                        self._since, self._at_since = -1, set()
                        self._floor = min(p.time for p in after if p.time is not None)
                    else:
                        # No rollback: records that arrived between the two reads.
                        after = [p for p in after
                                 if (p.step, p.rank, p.time) not in self._at_since]
                    self._append(after)
                    return len(after)
            self._append(new)
            return len(new)

    def _current(self, points: Any) -> list[StepPoint]:
        """Drop records of abandoned timelines (older than the current one's start).

        After a rollback or a restart the agent still holds the old timeline's records
        of later steps; a poll from a step of the new timeline returns them too. One
        stream reads one agent, whose records carry that node's clock, so their times
        order them.
        """
        if self._floor is None:
            return list(points)
        return [p for p in points if p.time is None or p.time >= self._floor]

    def poll_nodes(self) -> int:
        """Fetch the node records not seen yet; return how many (0 from an older agent)."""
        with self._lock:
            now = self.monotonic()
            if self._node_off_until is not None and now < self._node_off_until:
                return 0
            params = {"job": self.job, "since": repr(self._node_since)}
            try:
                r = self.session.get(self.node_url, params=params, timeout=self.timeout)
            except requests.RequestException as e:
                raise SourceError(f"agent {self.node_url}: {e}") from e
            if r.status_code == 404 and "no such path" in r.text:
                # An agent from before node records: the steps alone, as before.
                self._node_off_until = now + NODE_RETRY_S
                return 0
            if r.status_code != 200:
                raise SourceError(f"agent {self.node_url}?job={self.job}: HTTP "
                                  f"{r.status_code}: {r.text[:200]}")
            self._node_off_until = None
            try:
                got = r.json()["node"]
                recs = [node_record(f"agent {self.node_url} record", x) for x in got]
            except (ValueError, KeyError, TypeError, InputError) as e:
                raise SourceError(f"agent {self.node_url}?job={self.job}: not a node record "
                                  f"list ({e}): {r.text[:200]}") from e
            for rec in recs:
                if rec.time > self._node_since:
                    self.nodes.append(rec)
                    self._node_since = rec.time
            return len(recs)

    def window(self, rule: Rule, now: float) -> Window:
        """Poll (once per evaluation time) and return the cached steps and node records."""
        with self._poll_lock:
            if now != self._polled_for:
                self.poll()
                self.poll_nodes()
                self._polled_for = now  # not when a poll raised: the next rule asks again
        with self._lock:
            steps = list(self.steps)
            nodes = list(self.nodes)
        return Window(job=self.job, steps=steps, nodes=nodes, now=now)
