"""Where windows come from: Prometheus (cluster series) and the agent step stream."""

from __future__ import annotations

import math
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

import requests

from sentinel.rules.rules import Rule
from sentinel.rules.window import Series, StepPoint, Window

# Records kept per job between cycles; the agent's own ring is 20,000 per job.
STEP_CACHE = 20000
HTTP_TIMEOUT_S = 10.0


class SourceError(RuntimeError):
    """A source could not answer; the message says which query and why."""


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
              "+Inf": math.inf, "-Inf": -math.inf}


def _float(v: Any) -> float:
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    return float(v)


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
        return [
            Series(labels=dict(r.get("metric", {})),
                   points=[(float(t), _float(v)) for t, v in r.get("values", [])])
            for r in result
        ]

    def window(self, rule: Rule, now: float) -> Window:
        """Fetch every series role of ``rule`` over its window ending at ``now``."""
        start = now - rule.window_s
        series = {role: self.range(q, start, now, rule.step_s) for role, q in rule.series.items()}
        return Window(job=rule.job or "", series=series, now=now, step_s=rule.step_s,
                      range_s=rule.window_s)


class StepStream:
    """Follow one job's steps through the agent's ``/api/v1/steps`` (bounded cache)."""

    def __init__(self, agent_url: str, job: str, timeout: float = HTTP_TIMEOUT_S,
                 session: requests.Session | None = None) -> None:
        self.url = agent_url.rstrip("/") + "/api/v1/steps"
        self.job = job
        self.timeout = timeout
        self.session = session or requests.Session()
        self.steps: deque[StepPoint] = deque(maxlen=STEP_CACHE)
        self._since = 0

    def poll(self) -> int:
        """Fetch steps newer than the last seen; return how many arrived."""
        try:
            r = self.session.get(self.url, params={"job": self.job, "since": str(self._since)},
                                 timeout=self.timeout)
        except requests.RequestException as e:
            raise SourceError(f"agent {self.url}: {e}") from e
        if r.status_code != 200:
            raise SourceError(f"agent {self.url}?job={self.job}: HTTP {r.status_code}: "
                              f"{r.text[:200]}")
        body = r.json()
        new = 0
        last = self._since - 1
        for rec in body.get("steps", []):
            step = int(rec["step"])
            if step < self._since:
                continue
            gn = rec.get("grad_norm")
            self.steps.append(StepPoint(
                step=step, loss=_float(rec["loss"]),
                grad_norm=None if gn is None else _float(gn),
                time=float(rec["time"]) if rec.get("time") is not None else None,
                node=rec.get("host"), rank=rec.get("rank"),
            ))
            last = max(last, step)
            new += 1
        # Next time ask only for steps after the newest seen (the agent orders by step).
        self._since = last + 1 if new else self._since
        return new

    def window(self, rule: Rule, now: float) -> Window:
        """Poll and return the cached steps as a window."""
        self.poll()
        return Window(job=self.job, steps=list(self.steps), now=now)
