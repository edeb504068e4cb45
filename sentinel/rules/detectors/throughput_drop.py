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

import math
from dataclasses import dataclass, field
from typing import Any

from sentinel.rules.detectors._episodes import Episode, find_episodes, resolution
from sentinel.rules.detectors._rolling import median
from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Series, Window, node_of

NAME = "throughput_drop"


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
    peer_check: bool = field(
        default=True, metadata={"help": "also compare each node with the cluster median"},
    )
    min_nodes_for_peers: int = field(
        default=3, metadata={"help": "peers are compared only with at least this many nodes "
                             "(a median of two is not a majority)", "min": 2},
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


def detect(window: Window, params: Params) -> list[Finding]:
    """Return job-level drops and per-node (straggler) drops in the window."""
    p = params
    nodes = _by_node(window.role("tokens_per_sec"))
    if not nodes and window.steps:
        for sp in window.steps:
            if sp.tokens_per_sec is not None and sp.time is not None:
                nodes.setdefault(sp.node or "?", []).append((sp.time, sp.tokens_per_sec))
    all_pts = [pt for pts in nodes.values() for pt in pts]
    cl_series = window.role("tokens_per_sec_cluster")
    cl_pts = sorted(pt for s in cl_series for pt in s.points)
    res = resolution(cl_pts or sorted(all_pts), window.step_s)
    per_node = {n: _resample(pts, res) for n, pts in nodes.items()}
    cluster = [(t, v) for t, v in cl_pts] if cl_pts else _cluster(per_node, res)
    findings: list[Finding] = []
    if not cluster:
        return findings
    drop_line = 1.0 - p.drop_ratio

    eps = find_episodes(
        cluster, is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
        sustain_s=p.sustain_s, fraction=p.fraction, step_s=res,
    )
    dips = [
        {"start": e.start, "end": e.end, "depth": 1 - e.worst / e.baseline if e.baseline else 0.0,
         "duration_s": ((e.end if e.end is not None else e.last_bad + res) - e.start),
         "sustained": e.flagged is not None}
        for e in eps
    ]
    for e in eps:
        if e.flagged is None:
            continue
        depth = 1 - e.worst / e.baseline if e.baseline else 0.0
        evidence: dict[str, Any] = {
            "scope": "job", "baseline_tokens_per_sec": e.baseline,
            "worst_tokens_per_sec": e.worst, "depth": depth, "flagged_at": e.flagged,
            "detection_delay_s": e.flagged - e.start, "dips": dips, "nodes": sorted(nodes),
        }
        findings.append(Finding(
            kind="throughput_drop", severity="warning",
            summary=(f"job throughput {depth:.0%} below its own baseline "
                     f"{e.baseline:.4g} tokens/s since t={e.start:.0f}"),
            suggested_action="notify", detector=NAME, job=window.job or None,
            time_start=e.start, time_end=e.end if e.end is not None else e.last_bad,
            confidence=min(1.0, 0.5 + depth), evidence=evidence, state=_state(e),
            episode=f"{e.start:.0f}",
        ))

    # A cluster median given by Prometheus was computed over the whole fleet, even when
    # the per-node query returned only the slow nodes.
    if p.peer_check and (cl_pts or len(per_node) >= p.min_nodes_for_peers):
        cl_map = {round(t / res): v for t, v in cluster}
        for node, vals in sorted(per_node.items()):
            ratio = [(b * res, v / cl_map[b]) for b, v in sorted(vals.items())
                     if cl_map.get(b)]
            for e in find_episodes(
                ratio, is_bad=lambda v, b: v < drop_line * b, baseline_s=p.baseline_s,
                sustain_s=p.sustain_s, fraction=p.fraction, step_s=res, fixed_baseline=1.0,
            ):
                if e.flagged is None:
                    continue
                depth = 1 - e.worst
                findings.append(Finding(
                    kind="throughput_drop", severity="warning",
                    summary=(f"node {node} runs {depth:.0%} below the cluster median "
                             f"since t={e.start:.0f}"),
                    suggested_action="notify", detector=NAME, job=window.job or None,
                    node=node, time_start=e.start,
                    time_end=e.end if e.end is not None else e.last_bad,
                    confidence=min(1.0, 0.5 + depth),
                    evidence={"scope": "node", "ratio_to_cluster_median": e.worst,
                              "depth": depth, "flagged_at": e.flagged,
                              "detection_delay_s": e.flagged - e.start},
                    state=_state(e), episode=f"{e.start:.0f}",
                ))
    return findings


SPEC = DetectorSpec(
    name=NAME,
    params=Params,
    detect=detect,
    inputs=("tokens_per_sec", "tokens_per_sec_cluster", "steps"),
    required=("tokens_per_sec",),
    description="sustained tokens/sec drop vs the run's baseline and vs the cluster median",
)
