"""Name the cause of a throughput drop by correlating findings in time and place.

- drop + disk-read latency rise on the same nodes (or, for a job-wide drop, on any of
  the job's nodes) at the same time: **storage stall** (data, not the GPUs);
- drop + another process on a GPU of the node (for a job-wide drop: any node):
  **GPU contention**;
- drop + throttling or failing GPU on the node (for a job-wide drop: on any node,
  since synchronous training runs at the slowest GPU's pace): **throttling GPU**;
- job-wide drop with normal hardware: **job-wide software slowdown** (dataloader),
  and *worsening* when the drop itself keeps deepening (a per-step cost that grows) or
  the dips grow deeper/longer/more frequent with the step count;
- one node slow against its peers with no hardware signal: **straggler**.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Window

NAME = "diagnosis"

HARDWARE_KINDS = ("gpu_throttle", "gpu_hot", "gpu_xid", "gpu_ecc_uncorrected",
                  "gpu_remap_failure", "gpu_lost")


@dataclass
class Params:
    """Thresholds of the diagnosis."""

    overlap_slack_s: float = field(
        default=60.0,
        metadata={"help": "findings this close in time count as coinciding (a latency rise "
                  "shows up one or two scrapes before the throughput it causes)", "min": 0.0},
    )
    min_dips_for_trend: int = field(
        default=3, metadata={"help": "dips needed before saying they grow", "min": 2},
    )
    deepening_change: float = field(
        default=0.15,
        metadata={"help": "share of the baseline a drop must lose from its start to its end "
                  "(least-squares fit through its samples) to be 'worsening' on its own",
                  "min": 0.01, "max": 1.0},
    )
    deepening_r: float = field(
        default=0.7,
        metadata={"help": "how straight that fall must be (|correlation| of throughput with "
                  "time through the drop): jitter on a flat drop stays far below",
                  "min": 0.0, "max": 1.0},
    )
    deepening_samples: int = field(
        default=12, metadata={"help": "samples through the drop before its fit counts",
                              "min": 3},
    )
    trend_agreement: float = field(
        default=0.7,
        metadata={"help": "share of dip pairs (earlier, later) where the later is worse, for "
                  "'worsening'", "min": 0.5, "max": 1.0},
    )


def _span(f: Finding) -> tuple[float, float] | None:
    if f.time_start is None:
        return None
    return f.time_start, f.time_end if f.time_end is not None else f.time_start


def _overlaps(a: Finding, b: Finding, slack: float) -> bool:
    sa, sb = _span(a), _span(b)
    if sa is None or sb is None:
        return b.state == "firing"  # untimed hardware findings count while they fire
    return sa[0] - slack <= sb[1] and sb[0] - slack <= sa[1]


def _worsening(dips: list[dict[str, Any]], p: Params) -> dict[str, Any] | None:
    if len(dips) < p.min_dips_for_trend:
        return None
    cost = [float(d["depth"]) * float(d["duration_s"]) for d in dips]
    starts = [float(d["start"]) for d in dips]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    pairs = [(i, j) for i in range(len(cost)) for j in range(i + 1, len(cost))]
    worse = sum(1 for i, j in pairs if cost[j] > cost[i]) / len(pairs)
    gpairs = [(i, j) for i in range(len(gaps)) for j in range(i + 1, len(gaps))]
    closer = (sum(1 for i, j in gpairs if gaps[j] < gaps[i]) / len(gpairs)) if gpairs else 0.0
    if worse >= p.trend_agreement or (closer >= p.trend_agreement and worse >= 0.5):
        return {"dips": len(dips), "worse_pairs": worse, "closer_pairs": closer,
                "first_cost": cost[0], "last_cost": cost[-1]}
    return None


def _deepening(trend: Any, p: Params) -> dict[str, Any] | None:
    """Return the drop's own fall when it keeps deepening (a cost growing per step)."""
    if not isinstance(trend, dict):
        return None
    got = [trend.get(k) for k in ("change", "r", "samples")]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in got):
        return None
    change, r, n = (float(x) for x in got)  # type: ignore[arg-type]  # checked above
    if n >= p.deepening_samples and change <= -p.deepening_change and r <= -p.deepening_r:
        return {"deepening": round(change, 3), "r": round(r, 3), "samples": int(n)}
    return None


def _diagnose(drop: Finding, others: list[Finding], p: Params) -> Finding:
    scope = drop.evidence.get("scope", "job")
    near = [f for f in others if _overlaps(drop, f, p.overlap_slack_s)]
    if scope == "node":
        near = [f for f in near if f.node == drop.node]
    # A job-wide drop keeps every coinciding finding: online, the per-node query returns
    # only the slow nodes, so the job's node list is not known here.
    disk = [f for f in near if f.kind == "disk_latency"]
    shared = [f for f in near if f.kind == "gpu_contention"]
    hw = [f for f in near if f.kind in HARDWARE_KINDS]
    where = f"node {drop.node}" if scope == "node" else "the whole job"
    evidence: dict[str, Any] = {"drop": drop.key, "scope": scope}
    node = drop.node
    gpu = None
    if disk:
        cause, action, conf = "storage_stall", "notify", 0.85
        nodes = sorted({f.node or "?" for f in disk})
        evidence["disk_latency_nodes"] = nodes
        text = (f"storage stall: throughput drop on {where} coincides with disk read latency "
                f"rise on {', '.join(nodes)}; data, not the GPUs")
    elif shared:
        # Before hardware: a GPU slowed by a second process is not a broken GPU.
        cause, action, conf = "gpu_contention", "notify", 0.85
        first = shared[0]
        node, gpu = first.node, first.gpu
        evidence["contention"] = [f.summary for f in shared]
        text = (f"GPU contention: another process on GPU {gpu} of {node} slows {where}; "
                "stop it or move it off the job's GPUs")
    elif hw:
        cause, action, conf = "throttling_gpu", "spare_swap", 0.9
        worst = hw[0]
        node, gpu = worst.node, worst.gpu
        evidence["hardware"] = [f.summary for f in hw]
        kinds = sorted({f.kind for f in hw})
        text = (f"{'throttling' if 'gpu_throttle' in kinds or 'gpu_hot' in kinds else 'failing'}"
                f" GPU {gpu} on {node} slows {where} ({', '.join(kinds)}); replace the node, "
                f"burn-in the GPU")
    elif scope == "job":
        cause, action, conf = "job_wide_slowdown", "notify", 0.7
        deeper = _deepening(drop.evidence.get("trend"), p)
        trend = deeper or _worsening(list(drop.evidence.get("dips", [])), p)
        evidence["worsening"] = trend is not None
        if trend:
            evidence["trend"] = trend
            # A classification change is a change the engine emits: a drop found
            # before its fall was clear is re-sent once it is.
            evidence["classification"] = "worsening"
        text = ("job-wide slowdown on every node with normal hardware: software (dataloader, "
                "host-side input pipeline)"
                + ("; each step slower than the last" if deeper
                   else "; the drops grow with the step count" if trend else ""))
    else:
        cause, action, conf = "straggler", "spare_swap", 0.6
        text = (f"straggler: node {drop.node} slower than its peers with no hardware or "
                f"storage signal")
    evidence["cause"] = cause
    # Named once the drop and what names the cause were both found.
    used = [drop, *(disk or shared or hw)]
    seen = [f.detected_at for f in used if f.detected_at is not None]
    return Finding(
        kind="diagnosis", severity="warning", summary=text, suggested_action=action,
        detector=NAME, job=drop.job, node=node, gpu=gpu, step_start=drop.step_start,
        step_end=drop.step_end, time_start=drop.time_start, time_end=drop.time_end,
        confidence=conf * drop.confidence, evidence=evidence, state=drop.state,
        episode=f"{cause}@{drop.episode}",
        detected_at=max(seen) if len(seen) == len(used) else None,
        detected_step=drop.detected_step,
    )


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one diagnosis per throughput-drop finding in ``window.findings``."""
    drops = [f for f in window.findings if f.kind == "throughput_drop"]
    others = [f for f in window.findings if f.kind != "throughput_drop"]
    return [_diagnose(d, others, params) for d in drops]


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect, inputs=("findings",), required=(),
    description="storage stall / GPU contention / throttling GPU / job-wide slowdown "
                "(worsening?) / straggler",
)
