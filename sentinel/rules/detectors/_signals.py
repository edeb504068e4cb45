"""What each node saw second by second, and whether it explains a throughput drop.

The step-stream throughput detector (``throughput_drop.Stream``) feeds each step's
input wait and duration (``data_s``, from the Reporter) and each node record (disk read
latency, I/Os in flight, compute processes and ranks per GPU, clock-event reasons per
GPU: the agent's ``/api/v1/node`` or a file's node lines). When a drop becomes
sustained, :meth:`NodeSignals.judge` compares its first seconds with the seconds
before it, on each node (a job-wide drop: every node, since a synchronous job runs at
its slowest node's pace), and returns what rose:

* ``input_wait``: the input wait per step rose by at least ``input_share`` of the rise
  of the step time (the input explains the drop), with ``growing`` when it climbed along
  a line through the seconds around the drop's start rather than in one step (a
  per-step cost that grows);
* ``disk``: the node's disk read latency rose to ``disk_factor`` times its level before
  and at least ``disk_min_s``;
* ``gpu_contention``: a GPU had compute processes beyond the ranks on it (where the
  records do not say the ranks, more processes than before), in at least
  ``signal_fraction`` of the seconds;
* ``throttle``: bad clock-event reasons (``sentinel.gpu.reasons.BAD_REASONS``) on a GPU
  in at least that share of the seconds, where before they were not.

The diagnosis names the cause from that (``diagnosis.py``). Memory: per node the seconds
of the last ``keep_s``, for at most ``max_nodes`` nodes.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sentinel.gpu.reasons import BAD_MASK, CLOCK_EVENT_REASONS
from sentinel.gpu.reasons import names as reason_names
from sentinel.rules.window import NodePoint

# Entries of each kind an evidence list keeps (a job-wide drop on 1,024 nodes whose
# disks all slowed names the first few and counts the rest).
MAX_LISTED = 8


@dataclass(frozen=True)
class Thresholds:
    """When a node signal counts as risen (the throughput detector's params)."""

    input_share: float
    disk_factor: float
    disk_min_s: float
    signal_fraction: float
    # Seconds before a drop's start looked at for an input wait already rising.
    lookback_s: float


class _Second:
    """One node's second: its steps' durations and input waits, and its node records."""

    __slots__ = ("data", "dur", "extra", "inflight", "lat", "ranked", "reasons", "records",
                 "steps", "t")

    def __init__(self, t: float) -> None:
        self.t = t  # the second's start
        self.steps = 0
        self.dur = 0.0
        self.data = 0.0
        self.records = 0
        self.lat: float | None = None
        self.inflight: int | None = None
        self.extra: dict[str, int] | None = None  # GPU -> processes beyond its ranks
        self.ranked: set[str] | None = None  # GPUs whose ranks the record named
        self.reasons: dict[str, int] | None = None  # GPU -> bitmask of reasons


def _extra(np: NodePoint) -> dict[str, int]:
    """Return each GPU's compute processes beyond the ranks on it (a GPU no rank reports
    on counts all of its processes, as the gpu-contention rule's PromQL does).
    """
    return {g: max(0, n - np.gpu_ranks.get(g, 0)) for g, n in np.gpu_processes.items()}


def _mask(names: Iterable[str]) -> int:
    return sum(CLOCK_EVENT_REASONS[n] for n in set(names) if n in CLOCK_EVENT_REASONS)


class NodeSignals:
    """Per node and second, what the steps and node records said (bounded)."""

    def __init__(self, res: float, keep_s: float, max_nodes: int) -> None:
        self.res, self.keep_s, self.max_nodes = res, keep_s, max_nodes
        self._nodes: dict[str, OrderedDict[int, _Second]] = {}
        self.extra_nodes = 0  # records of nodes past max_nodes, not kept
        self.seen_data = False  # any step reported its input wait
        self.seen_records = False  # any node record came

    def _second(self, node: str, t: float) -> _Second | None:
        secs = self._nodes.get(node)
        if secs is None:
            if len(self._nodes) >= self.max_nodes:
                self.extra_nodes += 1
                return None
            secs = self._nodes[node] = OrderedDict()
        b = round(t / self.res)
        sec = secs.get(b)
        if sec is None:
            sec = secs[b] = _Second(b * self.res)
            # Bounded: the oldest seconds go (records come in time order, give or take
            # the ranks' clocks, so the dict's first entries are its oldest).
            while len(secs) > self.keep_s / self.res + 1:
                secs.popitem(last=False)
        return sec

    def step(self, node: str, t: float, duration: float, data_s: float) -> None:
        """Count a step that took ``duration`` seconds, ``data_s`` of them waiting for input."""
        sec = self._second(node, t)
        if sec is not None:
            self.seen_data = True
            sec.steps += 1
            sec.dur += duration
            sec.data += data_s

    def record(self, np: NodePoint) -> None:
        """Count a node record."""
        sec = self._second(np.node or "?", np.time)
        if sec is None:
            return
        self.seen_records = True
        sec.records += 1
        if np.disk_read_latency_s is not None:
            sec.lat = max(sec.lat or 0.0, np.disk_read_latency_s)
        if np.disk_in_flight is not None:
            sec.inflight = max(sec.inflight or 0, np.disk_in_flight)
        if np.gpu_processes:
            sec.extra = sec.extra or {}
            for g, n in _extra(np).items():
                sec.extra[g] = max(sec.extra.get(g, 0), n)
            sec.ranked = (sec.ranked or set()) | set(np.gpu_ranks)
        if np.throttle_reasons:
            sec.reasons = sec.reasons or {}
            for g, names in np.throttle_reasons.items():
                sec.reasons[g] = sec.reasons.get(g, 0) | _mask(names)

    def _span(self, node: str, lo: float, hi: float) -> list[_Second]:
        """Return ``node``'s seconds in [lo, hi), oldest first."""
        a, b = round(lo / self.res), round(hi / self.res)
        return sorted((s for k, s in self._nodes.get(node, {}).items() if a <= k < b),
                      key=lambda s: s.t)

    def before(self, node: str | None, start: float, baseline_s: float
               ) -> dict[str, list[_Second]]:
        """Return the seconds of ``node`` (None: every node) in the ``baseline_s`` before
        ``start``: what a drop's later seconds are judged against, kept with the drop.
        """
        nodes = [node] if node is not None else sorted(self._nodes)
        return {n: self._span(n, start - baseline_s, start) for n in nodes}

    def judge(self, node: str | None, start: float, flagged: float, baseline_s: float,
              th: Thresholds, *, since: float | None = None,
              before: dict[str, list[_Second]] | None = None) -> dict[str, Any] | None:
        """Return what rose on ``node`` (None: any node) from before ``start`` to the
        drop's seconds [start, flagged] (or [since, flagged]: a later stretch of it);
        None when no step and no node record said anything. With ``before`` (from
        :meth:`before`), the seconds judged against are those, and None also when no
        node has seconds on both sides (nothing to judge).
        """
        if not (self.seen_data or self.seen_records):
            return None
        out: dict[str, list[dict[str, Any]]] = {
            "input_wait": [], "disk": [], "gpu_contention": [], "throttle": []}
        nodes = [node] if node is not None else sorted(self._nodes)
        judged = 0
        for n in nodes:
            then = (before.get(n, []) if before is not None
                    else self._span(n, start - baseline_s, start))
            during = self._span(n, start if since is None else since, flagged + self.res)
            if not then or not during:
                continue
            judged += 1
            found = {"input_wait": _input_wait(n, then, during, th),
                     "disk": _disk(n, then, during, th),
                     "gpu_contention": _contention(n, then, during, th),
                     "throttle": _throttle(n, then, during, th)}
            for kind, got in found.items():
                out[kind] += got
        if before is not None and not judged:
            return None
        evidence: dict[str, Any] = {"checked": {"input_wait": self.seen_data,
                                                "node_records": self.seen_records}}
        for kind, got in out.items():
            if got:
                evidence[kind] = got[:MAX_LISTED]
                if len(got) > MAX_LISTED:
                    evidence[f"{kind}_more"] = len(got) - MAX_LISTED
        return evidence


def cause_of(signals: dict[str, Any] | None) -> str | None:
    """Return the cause a drop's node signals name, in the diagnosis' order, or None.

    Storage (the input wait explains the drop on a node whose disk latency rose), the
    input pipeline (the wait without a disk rise), GPU contention, a throttling GPU;
    None: nothing the nodes saw (job-wide software or a straggler, by scope). The
    diagnosis (``diagnosis.py``) names the same from the same evidence (a unit test
    holds them together); the throughput detector uses this to see a cause change.
    """
    if not signals:
        return None
    rose = {d["node"] for d in signals.get("disk", [])}
    waits = signals.get("input_wait", [])
    if any(w["node"] in rose for w in waits):
        return "storage_stall"
    if waits:
        return "input_pipeline"
    if signals.get("gpu_contention"):
        return "gpu_contention"
    if signals.get("throttle"):
        return "throttling_gpu"
    return None


def _per_step(secs: list[_Second]) -> tuple[int, float, float]:
    """Return (steps, mean step time, mean input wait) over ``secs``."""
    n = sum(s.steps for s in secs)
    if not n:
        return 0, 0.0, 0.0
    return n, sum(s.dur for s in secs) / n, sum(s.data for s in secs) / n


def _input_wait(node: str, before: list[_Second], during: list[_Second], th: Thresholds
                ) -> list[dict[str, Any]]:
    n0, t0, d0 = _per_step(before)
    n1, t1, d1 = _per_step(during)
    if n0 < 3 or n1 < 2 or t1 <= t0 or d1 - d0 < th.input_share * (t1 - t0):
        return []
    got: dict[str, Any] = {"node": node, "step_before_s": t0, "step_during_s": t1,
                           "wait_before_s": d0, "wait_during_s": d1}
    # The seconds leading into the drop, then the drop's: a cost that grows was already
    # rising before the throughput crossed the line.
    lead = [s for s in before if s.t >= before[-1].t - th.lookback_s] if before else []
    growing = _growing([(s.t, s.data / s.steps) for s in lead + during if s.steps])
    if growing is not None:
        got["growing"] = growing
    return [got]


def _growing(points: list[tuple[float, float]]) -> dict[str, Any] | None:
    """Return the fit of a wait that rises along a line rather than in a step, or None.

    A cost that grows per step makes the wait climb steadily through the seconds around
    the drop's start; an abrupt stall (storage, a dead worker) makes it jump once. So
    the line must fit better than the best single step (two levels, split anywhere),
    rise, and correlate (r >= 0.8). Scale-free: whatever the growth's rate, its line
    beats a step; noise alone fits neither with r >= 0.8.
    """
    if len(points) < 6:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if sxx <= 0 or syy <= 0:
        return None
    slope, r = sxy / sxx, sxy / math.sqrt(sxx * syy)
    line = syy - slope * sxy  # the line's residual sum of squares
    step = min(_sse(ys[:k]) + _sse(ys[k:]) for k in range(2, len(ys) - 1))
    if r < 0.8 or line > step:
        return None
    return {"wait_rise_s_per_s": round(slope, 6), "r": round(r, 3), "seconds": len(points)}


def _sse(ys: list[float]) -> float:
    m = statistics.fmean(ys)
    return sum((y - m) ** 2 for y in ys)


def _disk(node: str, before: list[_Second], during: list[_Second], th: Thresholds
          ) -> list[dict[str, Any]]:
    now = [s.lat for s in during if s.lat is not None]
    if len(now) < 2:
        return []
    then = [s.lat for s in before if s.lat is not None]
    level = statistics.median(then) if then else 0.0
    high = statistics.median(now)
    if high < th.disk_min_s or high < th.disk_factor * level:
        return []
    flights = [s.inflight for s in during if s.inflight is not None]
    old = [s.inflight for s in before if s.inflight is not None]
    return [{"node": node, "latency_before_s": level, "latency_during_s": high,
             "in_flight_before": statistics.median(old) if old else None,
             "in_flight_during": max(flights) if flights else None}]


def _contention(node: str, before: list[_Second], during: list[_Second], th: Thresholds
                ) -> list[dict[str, Any]]:
    out = []
    gpus = sorted({g for s in during if s.extra for g in s.extra})
    for g in gpus:
        # Where the ranks on the GPU are known, any process beyond them is another
        # program's, whenever it started (it may have loaded for a while before it
        # computed); where they are not, the count must have risen.
        known = any(s.ranked and g in s.ranked for s in during)
        level = 0 if known else statistics.median(
            [s.extra.get(g, 0) for s in before if s.extra] or [0])
        now = [s.extra.get(g, 0) for s in during if s.extra]
        over = [n for n in now if n > level]
        if now and len(over) >= th.signal_fraction * len(now):
            out.append({"node": node, "gpu": g, "extra_processes": max(over),
                        "before": level})
    return out


def _throttle(node: str, before: list[_Second], during: list[_Second], th: Thresholds
              ) -> list[dict[str, Any]]:
    out = []
    rec_before = [s for s in before if s.records]
    rec_during = [s for s in during if s.records]
    gpus = sorted({g for s in rec_during if s.reasons for g in s.reasons})
    for g in gpus:
        now = [(s.reasons or {}).get(g, 0) & BAD_MASK for s in rec_during]
        then = [(s.reasons or {}).get(g, 0) & BAD_MASK for s in rec_before]
        hot = [m for m in now if m]
        was = [m for m in then if m]
        if len(hot) < th.signal_fraction * len(now) or (
                then and len(was) >= th.signal_fraction * len(then)):
            continue
        bits = 0
        for m in hot:
            bits |= m
        out.append({"node": node, "gpu": g,
                    "reasons": reason_names(bits)})
    return out
