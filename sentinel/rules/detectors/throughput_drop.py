"""Find sustained throughput drops: the job against its own baseline, nodes against peers.

Job level: the cluster median of tokens/sec (given as ``tokens_per_sec_cluster``, or
computed from the per-node series) against its own median over the previous
``baseline_s``. Node level: each node's tokens/sec divided by the cluster median at
the same instant (stragglers). A drop is sustained when at least ``fraction`` of the
last ``sustain_s`` of samples are more than ``drop_ratio`` below; fewer bad samples
(a checkpoint save, an evaluation) are recorded as short dips, not findings. The
job-level finding lists every dip and drop in the window so the diagnosis can tell
whether they grow with the step count.
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sentinel.rules.detectors._continuity import Earlier, continue_episodes, earlier
from sentinel.rules.detectors._episodes import (
    Episode,
    EpisodeFinder,
    find_episodes,
    resolution,
)
from sentinel.rules.detectors._rolling import median
from sentinel.rules.detectors._signals import NodeSignals, Thresholds, cause_of
from sentinel.rules.finding import Finding
from sentinel.rules.jsonl import TIME_BACK_TOLERANCE_S
from sentinel.rules.spec import MAX_STREAM_FINDINGS, DetectorSpec
from sentinel.rules.window import NodePoint, Series, StepPoint, Window, node_of

NAME = "throughput_drop"
# Share of the sustain window's samples back above the line that ends a drop: a
# majority, not the 80% that made it sustained, so a run back to normal with +-15%
# jitter (a quarter of its samples under a 10% line) is not held open for ever.
CLOSE_FRACTION = 0.5
# Judgements in a row (each over the last sustain window, one per window) that must name
# the same new cause before an open drop is split under it: a cause must hold for two
# whole windows (12 s on the step rule), so one window of a flickering signal, or two
# causes taking turns, does not split a drop.
REJUDGE_CONFIRM = 2


@dataclass
class Params:
    """Thresholds of the throughput-drop detector."""

    drop_ratio: float = field(
        default=0.10,
        metadata={"help": "fraction below baseline that counts as a drop. The target is to "
                  "catch drops of 15%: at 0.10 a 15% drop stays below the line through "
                  "+-3% jitter, while jitter alone never reaches it", "min": 0.01, "max": 0.9},
    )
    sustain_s: float = field(
        default=30.0,
        metadata={"help": "seconds of samples a drop must fill before it is flagged: at 5 s "
                  "resolution a drop is flagged 25-30 s after it starts, and checkpoint "
                  "pauses of up to ~20 s are only dips", "min": 1.0},
    )
    fraction: float = field(
        default=0.8,
        metadata={"help": "share of the sustain window that must be below (5 of 6 samples)",
                  "min": 0.5, "max": 1.0},
    )
    baseline_s: float = field(
        default=300.0,
        metadata={"help": "seconds of normal samples before the recent window that make the "
                  "run's own baseline", "min": 10.0},
    )
    res_s: float = field(
        default=0.0,
        metadata={"help": "step records only: seconds per sample (records are averaged per "
                  "node in buckets this long); 0 takes the median gap of the first records' "
                  "times", "min": 0.0},
    )
    max_gap_s: float = field(
        default=0.0,
        metadata={"help": "longer than this without a sample, the series stopped (a job "
                  "down, not slow); 0 means 3 samples. Step records come one per step, so "
                  "a slowed job's samples are sparser than its buckets", "min": 0.0},
    )
    peer_check: bool = field(
        default=True, metadata={"help": "also compare each node with the cluster median"},
    )
    min_nodes_for_peers: int = field(
        default=3, metadata={"help": "peers are compared only with at least this many nodes "
                             "(a median of two is not a majority)", "min": 2},
    )
    # What the nodes saw (step records' data_s, node records): judged when a drop found
    # on step records becomes sustained, so its first finding carries its cause.
    input_share: float = field(
        default=0.5,
        metadata={"help": "step records: the input wait per step must rise by at least this "
                  "share of the step time's rise to name the input (it explains most of "
                  "the drop; a GPU-side slowdown leaves the wait flat)", "min": 0.1,
                  "max": 1.0},
    )
    disk_factor: float = field(
        default=3.0,
        metadata={"help": "node records: the disk read latency (median of the drop's seconds) "
                  "this many times its median before the drop is a storage stall; medians "
                  "of one-second worst values, so a single slow second does not count",
                  "min": 1.0},
    )
    disk_min_s: float = field(
        default=0.001,
        metadata={"help": "node records: and at least this high: a rise among sub-millisecond "
                  "reads (page cache, NVMe idle) stalls no input pipeline", "min": 0.0},
    )
    signal_fraction: float = field(
        default=0.5,
        metadata={"help": "node records: share of the drop's seconds a GPU must show an extra "
                  "process or a bad clock-event reason in (one sample is not a cause)",
                  "min": 0.1, "max": 1.0},
    )


def _resample(points: list[tuple[float, float]], res: float) -> dict[int, float]:
    buckets: dict[int, list[float]] = {}
    for t, v in points:
        if math.isfinite(v):
            buckets.setdefault(round(t / res), []).append(v)
    return {b: sum(vs) / len(vs) for b, vs in buckets.items()}


def _cluster(per_node: dict[str, dict[int, float]], res: float) -> list[tuple[float, float]]:
    times = sorted({b for d in per_node.values() for b in d})
    out = []
    for b in times:
        vals = [d[b] for d in per_node.values() if b in d]
        out.append((b * res, median(vals)))
    return out


def _by_node(series: list[Series]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for s in series:
        out.setdefault(node_of(s) or "?", []).extend(s.points)
    return {n: sorted(p) for n, p in out.items()}


def _state(ep: Episode) -> str:
    return "resolved" if ep.end is not None else "firing"


def _when(t: float) -> str:
    """Say when an episode started: a UTC time of day for wall-clock times, else t=N."""
    if t > 1e9:  # a Unix time (a trace's own clock, e.g. seconds from 0, stays as it is)
        return time.strftime("%H:%M:%S UTC", time.gmtime(t))
    return f"t={t:.0f}"


def _delay(e: Episode) -> float:
    assert e.flagged is not None  # only sustained episodes are findings
    return e.flagged - e.start


def _own(evidence: dict[str, Any], e: Episode) -> None:
    """Add what the nodes saw, and where the drop began if a new cause split it."""
    if e.signals is not None:
        evidence["signals"] = e.signals
    if e.since is not None:
        evidence["drop_start"] = e.since


def _job_finding(e: Episode, dips: list[dict[str, Any]], nodes: list[str], job: str
                 ) -> Finding:
    depth = 1 - e.worst / e.baseline if e.baseline else 0.0
    evidence: dict[str, Any] = {
        "scope": "job", "baseline_tokens_per_sec": e.baseline,
        "worst_tokens_per_sec": e.worst, "depth": depth, "flagged_at": e.flagged,
        "detection_delay_s": _delay(e), "dips": dips, "nodes": nodes,
    }
    tr = e.trend()
    if tr is not None and e.baseline:
        slope, r, n = tr
        span = (e.end if e.end is not None else e.last_bad) - e.start
        # How much of the baseline the drop lost from its start to its end, by the fit.
        evidence["trend"] = {"change": slope * span / e.baseline, "r": r, "samples": n}
    _own(evidence, e)
    return Finding(
        kind="throughput_drop", severity="warning",
        summary=(f"job throughput {depth:.0%} below its own baseline "
                 f"{e.baseline:.4g} tokens/s since {_when(e.start)}"),
        suggested_action="notify", detector=NAME, job=job or None,
        time_start=e.start, time_end=e.end if e.end is not None else e.last_bad,
        confidence=min(1.0, 0.5 + depth), evidence=evidence, state=_state(e),
        episode=f"{e.start:.0f}", detected_at=e.flagged, detected_step=e.flagged_step,
    )


def _node_finding(e: Episode, node: str, job: str) -> Finding:
    depth = 1 - e.worst
    evidence: dict[str, Any] = {
        "scope": "node", "ratio_to_cluster_median": e.worst, "depth": depth,
        "flagged_at": e.flagged, "detection_delay_s": _delay(e)}
    _own(evidence, e)
    return Finding(
        kind="throughput_drop", severity="warning",
        summary=(f"node {node} runs {depth:.0%} below the cluster median "
                 f"since {_when(e.start)}"),
        suggested_action="notify", detector=NAME, job=job or None,
        node=node, time_start=e.start,
        time_end=e.end if e.end is not None else e.last_bad,
        confidence=min(1.0, 0.5 + depth), evidence=evidence,
        state=_state(e), episode=f"{e.start:.0f}",
        detected_at=e.flagged, detected_step=e.flagged_step,
    )


def _dip(e: Episode, res: float) -> dict[str, Any]:
    return {"start": e.start, "end": e.end,
            "depth": 1 - e.worst / e.baseline if e.baseline else 0.0,
            "duration_s": ((e.end if e.end is not None else e.last_bad + res) - e.start),
            "sustained": e.flagged is not None}


def _finder_at(p: Params, res: float) -> Callable[[float, Callable[[Episode], None]],
                                                  EpisodeFinder]:
    """Return a maker of finders judging samples against a fixed baseline."""
    drop_line = 1.0 - p.drop_ratio

    def make(base: float, on: Callable[[Episode], None]) -> EpisodeFinder:
        return EpisodeFinder(is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
                             sustain_s=p.sustain_s, fraction=p.fraction, res=res,
                             on_episode=on, fixed_baseline=base,
                             close_fraction=CLOSE_FRACTION)
    return make


def _job_episodes(cluster: list[tuple[float, float]], res: float, p: Params,
                  previous: list[Finding]) -> list[Episode]:
    """Return the job's episodes in the window, those of earlier cycles continued."""
    drop_line = 1.0 - p.drop_ratio
    fresh = find_episodes(
        cluster, is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
        sustain_s=p.sustain_s, fraction=p.fraction, step_s=res,
        close_fraction=CLOSE_FRACTION,
    )
    before = earlier(
        previous, lambda f: f.kind == NAME and f.evidence.get("scope") == "job",
        baseline=lambda f: _num(f.evidence.get("baseline_tokens_per_sec")),
        worst=lambda f: _num(f.evidence.get("worst_tokens_per_sec")))
    return continue_episodes(cluster, fresh, before, _finder_at(p, res))


def _node_episodes(ratio: list[tuple[float, float]], node: str, res: float, p: Params,
                   previous: list[Finding]) -> list[Episode]:
    """Return one node's episodes against the cluster median, earlier ones continued."""
    drop_line = 1.0 - p.drop_ratio
    fresh = find_episodes(
        ratio, is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
        sustain_s=p.sustain_s, fraction=p.fraction, step_s=res, fixed_baseline=1.0,
        close_fraction=CLOSE_FRACTION,
    )
    before = earlier(
        previous, lambda f: (f.kind == NAME and f.evidence.get("scope") == "node"
                             and f.node == node),
        baseline=lambda f: 1.0,
        worst=lambda f: _num(f.evidence.get("ratio_to_cluster_median")))
    return continue_episodes(ratio, fresh, before, _finder_at(p, res))


def _node_scope(node: str | None, f: Finding) -> bool:
    return f.kind == NAME and f.node == node and f.evidence.get("scope") == "node"


def _open_before(previous: list[Finding]) -> dict[str | None, Earlier]:
    """Return the newest still-open drop of earlier cycles, per node (None: the job)."""
    out: dict[str | None, Earlier] = {}
    job = earlier(previous, lambda f: f.kind == NAME and f.evidence.get("scope") == "job",
                  baseline=lambda f: _num(f.evidence.get("baseline_tokens_per_sec")),
                  worst=lambda f: _num(f.evidence.get("worst_tokens_per_sec")))
    if job and job[-1].end is None:
        out[None] = job[-1]
    nodes = {f.node for f in previous if f.kind == NAME and f.evidence.get("scope") == "node"}
    for node in nodes:
        eps = earlier(previous, functools.partial(_node_scope, node), baseline=lambda f: 1.0,
                      worst=lambda f: _num(f.evidence.get("ratio_to_cluster_median")))
        if eps and eps[-1].end is None and node is not None:
            out[node] = eps[-1]
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def detect(window: Window, params: Params) -> list[Finding]:
    """Return job-level drops and per-node (straggler) drops in the window."""
    p = params
    nodes = _by_node(window.role("tokens_per_sec"))
    cl_series = window.role("tokens_per_sec_cluster")
    if not nodes and not cl_series:
        # From step records (sentinel detect FILE): the streamed detector, in time order.
        stream = Stream(p, window.job, window.previous)
        steps = sorted((sp for sp in window.steps if sp.time is not None),
                       key=lambda sp: sp.time or 0.0)
        recs = sorted(window.nodes, key=lambda r: r.time)
        merged: Iterator[StepPoint | NodePoint] = heapq.merge(
            steps, recs, key=lambda r: r.time or 0.0)
        for rec in merged:
            if isinstance(rec, NodePoint):
                stream.feed_node(rec)
            else:
                stream.feed(rec)
        return stream.finish()
    all_pts = [pt for pts in nodes.values() for pt in pts]
    cl_pts = sorted(pt for s in cl_series for pt in s.points)
    res = resolution(cl_pts or sorted(all_pts), window.step_s)
    per_node = {n: _resample(pts, res) for n, pts in nodes.items()}
    cluster = [(t, v) for t, v in cl_pts] if cl_pts else _cluster(per_node, res)
    findings: list[Finding] = []
    if not cluster:
        return findings

    eps = _job_episodes(cluster, res, p, window.previous)
    dips = [_dip(e, res) for e in eps]
    findings += [_job_finding(e, dips, sorted(nodes), window.job)
                 for e in eps if e.flagged is not None]

    # A cluster median given by Prometheus was computed over the whole fleet, even when
    # the per-node query returned only the slow nodes.
    if p.peer_check and (cl_pts or len(per_node) >= p.min_nodes_for_peers):
        cl_map = {round(t / res): v for t, v in cluster}
        for node, vals in sorted(per_node.items()):
            ratio = [(b * res, v / cl_map[b]) for b, v in sorted(vals.items())
                     if cl_map.get(b)]
            for e in _node_episodes(ratio, node, res, p, window.previous):
                if e.flagged is not None:
                    findings.append(_node_finding(e, node, window.job))
    return findings


@dataclass
class _Judge:
    """An open drop's cause, judged again each sustain window (Stream._rejudge)."""

    start: float  # the episode it follows
    since: float  # where the drop began: its seconds before are the reference
    before: dict[str, Any]  # those seconds, per node (NodeSignals.before)
    cause: str | None  # the cause it is open under (None: nothing the nodes saw)
    next_t: float  # when to judge next (on a grid from the drop's flagging)
    candidate: str | None = None  # a different cause judged lately...
    count: int = 0  # ...this many times in a row
    first: float = 0.0  # from when (the first such judgement's window)


class Stream:
    """The detector over step records in time order (``sentinel detect FILE``).

    What :func:`detect` does with series, one sample at a time: the resolution is the
    median gap of the first RES_SAMPLE records' times; each record goes into its
    node's time bucket; a bucket is closed once the input is HOLD_S past it (records
    may come out of order by that much: ranks' clocks), and gives the cluster median
    (fed to the job's episode finder) and each node's ratio to it (fed to that node's).
    Memory: the open buckets, one finder per node (MAX_NODES), MAX_DIPS dips.

    Beside the rates it keeps, per node and second, what the steps' input waits
    (``data_s``) and the node records (:meth:`feed_node`) said (``_signals.NodeSignals``),
    and when a drop becomes sustained it judges them on the drop's first seconds
    against those before: the finding's ``evidence.signals``, from which the diagnosis
    names the cause in the same cycle as the drop's first emission. While the drop stays
    open it judges them again each ``sustain_s`` (the last window against the seconds
    before the drop began); a different cause named REJUDGE_CONFIRM times in a row ends
    the drop's episode where it was first seen and opens a new one under it (its own
    finding and diagnosis; ``evidence.drop_start`` keeps where the drop began).
    """

    RES_SAMPLE = 4096
    # Node records come once a second; step records' input waits are kept at the same grain.
    SIGNAL_RES_S = 1.0
    # Twice sentinel detect's tolerance for records out of time order, so none comes late.
    HOLD_S = 2 * TIME_BACK_TOLERANCE_S
    MAX_NODES = 4096
    MAX_DIPS = 1000

    def __init__(self, params: Params, job: str, previous: list[Finding] | None = None
                 ) -> None:
        self.p, self.job = params, job
        # The drops earlier cycles reported still open, by node (None: the job): each
        # finder takes its own up again when the samples reach its start (continuity).
        self._cont: dict[str | None, Earlier] = {}
        for key, found in _open_before(previous or []).items():
            self._cont[key] = found
        self.res = 0.0
        # (time, node, tokens/s, step) until the resolution is known
        self._first: list[tuple[float, str, float, int]] = []
        self._steps: dict[int, int] = {}  # open bucket -> the newest step in it
        self._open: dict[int, dict[str, list[float]]] = {}  # bucket -> node -> [sum, n]
        self._order: list[int] = []  # heap of the open buckets
        self._closed_to: int | None = None  # buckets up to this one are closed
        self._latest = -math.inf
        self.nodes: set[str] = set()
        self._job: EpisodeFinder | None = None
        self._node_finders: dict[str, EpisodeFinder] = {}
        self._job_eps: list[Episode] = []
        self._node_eps: list[tuple[str, Episode]] = []
        self._judges: dict[str | None, _Judge] = {}  # open drop's cause, by node (None: job)
        self._dips: deque[dict[str, Any]] = deque(maxlen=self.MAX_DIPS)
        self.dropped = 0  # findings past MAX_STREAM_FINDINGS
        self.late = 0  # records for a bucket already closed
        self.extra_nodes = 0  # records of nodes past MAX_NODES
        self.dips_seen = 0
        self.notes: list[str] = []
        # (node, rank) -> (step, time) of its newest record, for step records' own rates.
        self._prev: dict[tuple[str | None, int | None], tuple[int, float]] = {}
        p = params
        self._th = Thresholds(input_share=p.input_share, disk_factor=p.disk_factor,
                              disk_min_s=p.disk_min_s, signal_fraction=p.signal_fraction,
                              lookback_s=p.sustain_s)
        # Seconds kept per node: the baseline before a drop, the drop's first seconds,
        # and the HOLD_S by which bucket closing (and so the judgement) lags the input.
        self.signals = NodeSignals(self.SIGNAL_RES_S, p.baseline_s + self.HOLD_S + 120.0,
                                   self.MAX_NODES)

    def _finder(self, on: Callable[[Episode], None], fixed: float | None) -> EpisodeFinder:
        p = self.p
        drop_line = 1.0 - p.drop_ratio
        return EpisodeFinder(is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
                             sustain_s=p.sustain_s, fraction=p.fraction, res=self.res,
                             on_episode=on, fixed_baseline=fixed,
                             close_fraction=CLOSE_FRACTION, max_gap_s=p.max_gap_s or None)

    def _duration(self, pt: StepPoint) -> float | None:
        """Return the seconds since the same rank's previous step, when that was the step
        just before (else None), and remember this one.
        """
        if pt.time is None:
            return None
        who = (pt.node, pt.rank)
        prev = self._prev.get(who)
        if prev is None and len(self._prev) >= self.MAX_NODES * 8:
            return None  # bounded: ranks past the limit give no duration
        self._prev[who] = (pt.step, pt.time)
        if prev is None or pt.step != prev[0] + 1 or pt.time <= prev[1]:
            return None
        return pt.time - prev[1]

    def feed(self, pt: StepPoint) -> None:
        """Take the next step record (those without time or tokens/sec are skipped).

        Its tokens/sec is given, or its tokens over its duration; its input wait
        (``data_s``) over its duration goes to the node's signals.
        """
        dur = self._duration(pt)
        if pt.time is None:
            return
        if pt.data_s is not None and dur is not None:
            self.signals.step(pt.node or "?", pt.time, dur, pt.data_s)
        rate = pt.tokens_per_sec
        if rate is None and pt.tokens is not None and dur is not None:
            rate = pt.tokens / dur
        if rate is None:
            return
        node = pt.node or "?"
        if node not in self.nodes:
            if len(self.nodes) >= self.MAX_NODES:
                self.extra_nodes += 1
                return
            self.nodes.add(node)
        if self._job is None:
            self._first.append((pt.time, node, rate, pt.step))
            if len(self._first) >= self.RES_SAMPLE:
                self._start()
            return
        self._add(pt.time, node, rate, pt.step)

    def feed_node(self, rec: NodePoint) -> None:
        """Take the next node record (what a node saw in one second)."""
        self.signals.record(rec)

    def _start(self) -> None:
        """Fix the resolution from the records so far and replay them."""
        self.res = self.p.res_s or resolution(sorted((t, v) for t, _n, v, _s in self._first))
        self._job = self._finder(self._job_episode, None)
        first, self._first = self._first, []
        for t, node, v, step in first:
            self._add(t, node, v, step)

    def _add(self, t: float, node: str, v: float, step: int) -> None:
        b = round(t / self.res)
        if self._closed_to is not None and b <= self._closed_to:
            self.late += 1
            return
        if math.isfinite(v):
            if b not in self._open:
                self._open[b] = {}
                heapq.heappush(self._order, b)
            acc = self._open[b].setdefault(node, [0.0, 0])
            acc[0] += v
            acc[1] += 1
            self._steps[b] = max(step, self._steps.get(b, step))
        if t > self._latest:
            self._latest = t
            self._close_until(round((t - self.HOLD_S) / self.res) - 1)

    def _close_until(self, last: int) -> None:
        while self._order and self._order[0] <= last:
            self._close_bucket(heapq.heappop(self._order))
        if self._closed_to is None or last > self._closed_to:
            self._closed_to = last

    def _close_bucket(self, b: int) -> None:
        assert self._job is not None
        per_node = {n: acc[0] / acc[1] for n, acc in self._open.pop(b).items()}
        step = self._steps.pop(b, None)
        t = b * self.res
        cluster = median(per_node.values())
        self._resume(self._job, None, t)
        self._job.feed(t, cluster)
        self._mark(self._job, step, None)
        self._rejudge(self._job, None, t, cluster, step)
        if not self.p.peer_check or not cluster:
            return
        for node, v in sorted(per_node.items()):
            f = self._node_finders.get(node)
            if f is None:
                f = self._node_finders[node] = self._finder(
                    functools.partial(self._node_episode, node), 1.0)
            self._resume(f, node, t)
            f.feed(t, v / cluster)
            self._mark(f, step, node)
            self._rejudge(f, node, t, v / cluster, step)

    def _mark(self, finder: EpisodeFinder, step: int | None, node: str | None) -> None:
        """Note the step at which the finder's open episode was just flagged, and judge
        what the nodes (``node``: that one; None: every node) saw as it began.
        """
        cur = finder.cur
        if cur is None or cur.flagged is None or cur.flagged_step is not None:
            return
        cur.flagged_step = step
        if cur.signals is None:  # an episode continued from earlier cycles keeps its own
            cur.signals = self.signals.judge(node, cur.start, cur.flagged, self.p.baseline_s,
                                             self._th)
        since = cur.since if cur.since is not None else cur.start
        self._judges[node] = _Judge(
            start=cur.start, since=since, cause=cause_of(cur.signals),
            before=self.signals.before(node, since, self.p.baseline_s),
            next_t=cur.flagged + self.p.sustain_s)

    def _rejudge(self, finder: EpisodeFinder, node: str | None, t: float, value: float,
                 step: int | None) -> None:
        """Judge an open drop's cause again on its last sustain window; split the drop
        when a new cause is named REJUDGE_CONFIRM times in a row (REJUDGE_CONFIRM's why).
        """
        cur, j = finder.cur, self._judges.get(node)
        if j is None:
            return
        if cur is None or cur.start != j.start:
            del self._judges[node]  # its drop ended
            return
        if t < j.next_t:
            return
        # On a grid from the drop's flagging, whatever the first time judged: each cycle
        # replays its window and must judge the same seconds (the same split, the same key).
        j.next_t += self.p.sustain_s * max(1, math.ceil((t - j.next_t) / self.p.sustain_s))
        sig = self.signals.judge(node, j.since, t, self.p.baseline_s, self._th,
                                 since=t - self.p.sustain_s, before=j.before)
        if sig is None:
            return  # nothing to judge on (no seconds before the drop kept): keep the cause
        verdict = cause_of(sig)
        if verdict == j.cause:
            j.count = 0
            return
        if j.count and verdict == j.candidate:
            j.count += 1
        else:
            j.candidate, j.count, j.first = verdict, 1, t - self.p.sustain_s
        if j.count < REJUDGE_CONFIRM:
            return
        sig["cause_before"] = j.cause
        new = finder.split(j.first, t, value, sig)
        new.flagged_step = step
        j.start, j.cause, j.count, j.candidate = new.start, verdict, 0, None

    def _resume(self, finder: EpisodeFinder, key: str | None, t: float) -> None:
        """Continue the drop earlier cycles reported open, once the samples reach it."""
        e = self._cont.get(key)
        if e is None or t < e.start:
            return
        del self._cont[key]
        finder.resume(e.reopen())

    def _job_episode(self, e: Episode) -> None:
        self.dips_seen += 1
        self._dips.append(_dip(e, self.res))
        if e.flagged is not None:
            self._keep(self._job_eps, e)

    def _node_episode(self, node: str, e: Episode) -> None:
        if e.flagged is not None:
            self._keep(self._node_eps, (node, e))

    def _keep(self, where: list[Any], item: Any) -> None:
        if len(self._job_eps) + len(self._node_eps) < MAX_STREAM_FINDINGS:
            where.append(item)
        else:
            self.dropped += 1

    def finish(self) -> list[Finding]:
        """Close every bucket and return the job's and the nodes' drops."""
        if self._job is None:
            if not self._first:
                return []
            self._start()
        self._close_until(max(self._open, default=-1))
        assert self._job is not None
        self._job.finish()
        for f in self._node_finders.values():
            f.finish()
        for n, what in ((self.dropped, f"more drops not shown (at most {MAX_STREAM_FINDINGS})"),
                        (self.late, f"records more than {self.HOLD_S:g} s late not used"),
                        (self.extra_nodes + self.signals.extra_nodes,
                         f"records of nodes past the first {self.MAX_NODES} not used"),
                        (self.dips_seen - len(self._dips), "older dips left out of the "
                         "evidence")):
            if n:
                self.notes.append(f"{n} {what}")
        dips = list(self._dips)
        out = [_job_finding(e, dips, sorted(self.nodes), self.job) for e in self._job_eps]
        if self.p.peer_check and len(self.nodes) >= self.p.min_nodes_for_peers:
            out += [_node_finding(e, node, self.job)
                    for node, e in sorted(self._node_eps, key=lambda x: (x[0], x[1].start))]
        return out


SPEC = DetectorSpec(
    name=NAME,
    params=Params,
    detect=detect,
    inputs=("tokens_per_sec", "tokens_per_sec_cluster", "steps"),
    required=("tokens_per_sec",),
    description="sustained tokens/sec drop vs the run's baseline and vs the cluster median",
    stream=Stream,
)
