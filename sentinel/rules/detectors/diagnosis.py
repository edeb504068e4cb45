"""Name the cause of a throughput drop from what coincides with it, in time and place.

Two sources, the same causes: findings of the other rules in the cycle (Prometheus
series: disk latency, GPU contention, throttling, XIDs) and what the nodes saw as the
drop began, which a drop found on the step records carries in ``evidence.signals``
(``_signals.py``: the steps' input wait, the agent's per-second node records), so the
drop's first finding already names its cause. In order:

- drop + disk-read latency rise on the same nodes (or, for a job-wide drop, on any of
  the job's nodes) at the same time, or the steps' input wait explaining the drop on a
  node whose disk read latency rose: **storage stall** (data, not the GPUs);
- the steps' input wait explaining the drop without a disk rise: **input pipeline**
  (dataloader, host-side preprocessing);
- drop + another process on a GPU of the node (for a job-wide drop: any node):
  **GPU contention**;
- drop + throttling or failing GPU on the node (for a job-wide drop: on any node,
  since synchronous training runs at the slowest GPU's pace): **throttling GPU**;
- job-wide drop with normal hardware: **job-wide software slowdown** (dataloader);
  this and the input pipeline are *worsening* when the cost keeps growing: the input
  wait rising through the drop's first seconds, the drop itself deepening, or the dips
  growing deeper/longer/more frequent with the step count;
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


@dataclass
class _Cause:
    """What names a drop's cause: its name, action, confidence, where, words, evidence."""

    cause: str
    action: str
    conf: float
    text: str
    node: str | None = None
    gpu: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    # Findings that named it (their detection times bound the diagnosis'); none when the
    # drop's own evidence (what the nodes saw) did.
    used: list[Finding] = field(default_factory=list)


def _storage(disk: list[Finding], sig: dict[str, Any], where: str) -> _Cause | None:
    """Storage: a disk-latency finding coincides, or on some node the input wait explains
    the drop while the disk read latency rose.
    """
    if disk:
        nodes = sorted({f.node or "?" for f in disk})
        return _Cause("storage_stall", "notify", 0.85,
                      f"storage stall: throughput drop on {where} coincides with disk read "
                      f"latency rise on {', '.join(nodes)}; data, not the GPUs",
                      evidence={"disk_latency_nodes": nodes}, used=disk)
    rose = {d["node"]: d for d in sig.get("disk", [])}
    waits = [w for w in sig.get("input_wait", []) if w["node"] in rose]
    if not waits:
        return None
    nodes = [w["node"] for w in waits]
    d = rose[nodes[0]]
    return _Cause("storage_stall", "notify", 0.85,
                  f"storage stall: the steps on {', '.join(nodes)} wait for their input "
                  f"({_ms(waits[0]['wait_before_s'])} -> {_ms(waits[0]['wait_during_s'])} a "
                  f"step) while the disk read latency rose {_ms(d['latency_before_s'])} -> "
                  f"{_ms(d['latency_during_s'])}; data, not the GPUs, slows {where}",
                  evidence={"disk_latency_nodes": nodes})


def _ms(seconds: Any) -> str:
    return f"{float(seconds) * 1000:.3g} ms" if isinstance(seconds, int | float) else "?"


def _gpu_cause(near: list[Finding], sig: dict[str, Any], where: str) -> _Cause | None:
    """Another process on a GPU, else a throttling or failing GPU (findings or signals)."""
    shared = [f for f in near if f.kind == "gpu_contention"]
    if shared:
        # Before hardware: a GPU slowed by a second process is not a broken GPU.
        first = shared[0]
        return _Cause("gpu_contention", "notify", 0.85,
                      f"GPU contention: another process on GPU {first.gpu} of {first.node} "
                      f"slows {where}; stop it or move it off the job's GPUs",
                      first.node, first.gpu, {"contention": [f.summary for f in shared]},
                      shared)
    if sig.get("gpu_contention"):
        c = sig["gpu_contention"][0]
        return _Cause("gpu_contention", "notify", 0.85,
                      f"GPU contention: {c['extra_processes']} compute process(es) besides "
                      f"the job's ranks on GPU {c['gpu']} of {c['node']} slow {where}; stop "
                      "it or move it off the job's GPUs", c["node"], c["gpu"])
    hw = [f for f in near if f.kind in HARDWARE_KINDS]
    if hw:
        worst = hw[0]
        kinds = sorted({f.kind for f in hw})
        hot = "gpu_throttle" in kinds or "gpu_hot" in kinds
        return _Cause("throttling_gpu", "spare_swap", 0.9,
                      f"{'throttling' if hot else 'failing'} GPU {worst.gpu} on {worst.node} "
                      f"slows {where} ({', '.join(kinds)}); replace the node, burn-in the GPU",
                      worst.node, worst.gpu, {"hardware": [f.summary for f in hw]}, hw)
    if sig.get("throttle"):
        t = sig["throttle"][0]
        return _Cause("throttling_gpu", "spare_swap", 0.9,
                      f"throttling GPU {t['gpu']} on {t['node']} slows {where} "
                      f"({', '.join(t['reasons'])}); replace the node, burn-in the GPU",
                      t["node"], t["gpu"])
    return None


def _trend(drop: Finding, waits: list[dict[str, Any]], p: Params
           ) -> tuple[dict[str, Any], str]:
    """Return the worsening evidence of a software cause, and words for it: the input
    wait rising through the drop's first seconds, the drop deepening, or dips growing.
    """
    growing = next((w["growing"] for w in waits if "growing" in w), None)
    deeper = _deepening(drop.evidence.get("trend"), p)
    trend = growing or deeper or _worsening(list(drop.evidence.get("dips", [])), p)
    evidence: dict[str, Any] = {"worsening": trend is not None}
    if trend:
        evidence["trend"] = trend
        # A classification change is a change the engine emits: a drop found
        # before its fall was clear is re-sent once it is.
        evidence["classification"] = "worsening"
    return evidence, ("; each step slower than the last" if growing or deeper
                      else "; the drops grow with the step count" if trend else "")


def _input(drop: Finding, sig: dict[str, Any], where: str, p: Params) -> _Cause | None:
    """The input pipeline: the steps' own input wait explains the drop (no disk rise)."""
    waits = sig.get("input_wait", [])
    if not waits:
        return None
    evidence, more = _trend(drop, waits, p)
    w = waits[0]
    return _Cause("input_pipeline", "notify", 0.8,
                  f"input pipeline: the steps on {', '.join(x['node'] for x in waits)} wait "
                  f"for their input ({_ms(w['wait_before_s'])} -> {_ms(w['wait_during_s'])} a "
                  f"step, the step {_ms(w['step_before_s'])} -> {_ms(w['step_during_s'])}) "
                  f"with no disk latency rise; the dataloader or host-side preprocessing "
                  f"slows {where}" + more, evidence=evidence)


def _job_wide(drop: Finding, p: Params) -> _Cause | None:
    """A job-wide drop with normal hardware: software."""
    if drop.evidence.get("scope", "job") != "job":
        return None
    evidence, more = _trend(drop, [], p)
    return _Cause("job_wide_slowdown", "notify", 0.7,
                  "job-wide slowdown on every node with normal hardware: software "
                  "(dataloader, host-side input pipeline)" + more, evidence=evidence)


def _signals_of(drop: Finding, drops: list[Finding], slack: float) -> tuple[dict[str, Any], str]:
    """Return what the nodes saw as the drop began (its own, or that of a drop found on
    the step records at the same time and place: the Prometheus form of the same drop),
    and the key of the finding they came from ("" for none).
    """
    own = drop.evidence.get("signals")
    if isinstance(own, dict):
        return own, drop.key
    scope = drop.evidence.get("scope", "job")
    for other in drops:
        sig = other.evidence.get("signals")
        if (isinstance(sig, dict) and other.evidence.get("scope", "job") == scope
                and (scope == "job" or other.node == drop.node)
                and _overlaps(drop, other, slack)):
            return sig, other.key
    return {}, ""


def _diagnose(drop: Finding, others: list[Finding], drops: list[Finding], p: Params
              ) -> Finding:
    scope = drop.evidence.get("scope", "job")
    near = [f for f in others if _overlaps(drop, f, p.overlap_slack_s)]
    if scope == "node":
        near = [f for f in near if f.node == drop.node]
    # A job-wide drop keeps every coinciding finding: online, the per-node query returns
    # only the slow nodes, so the job's node list is not known here.
    sig, source = _signals_of(drop, drops, p.overlap_slack_s)
    where = f"node {drop.node}" if scope == "node" else "the whole job"
    found = (_storage([f for f in near if f.kind == "disk_latency"], sig, where)
             or _input(drop, sig, where, p) or _gpu_cause(near, sig, where)
             or _job_wide(drop, p)
             or _Cause("straggler", "spare_swap", 0.6,
                       f"straggler: node {drop.node} slower than its peers with no hardware "
                       "or storage signal"))
    evidence: dict[str, Any] = {"drop": drop.key, "scope": scope, **found.evidence,
                                "cause": found.cause}
    if source:
        evidence["node_signals"] = source
    # Named once the drop and what names the cause were both found.
    used = [drop, *found.used]
    seen = [f.detected_at for f in used if f.detected_at is not None]
    return Finding(
        kind="diagnosis", severity="warning", summary=found.text,
        suggested_action=found.action, detector=NAME, job=drop.job,
        node=found.node if found.node is not None else drop.node, gpu=found.gpu,
        step_start=drop.step_start, step_end=drop.step_end, time_start=drop.time_start,
        time_end=drop.time_end, confidence=found.conf * drop.confidence, evidence=evidence,
        state=drop.state, episode=f"{found.cause}@{drop.episode}",
        detected_at=max(seen) if len(seen) == len(used) else None,
        detected_step=drop.detected_step,
    )


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one diagnosis per throughput-drop finding in ``window.findings``."""
    drops = [f for f in window.findings if f.kind == "throughput_drop"]
    others = [f for f in window.findings if f.kind != "throughput_drop"]
    return [_diagnose(d, others, drops, params) for d in drops]


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect, inputs=("findings",), required=(),
    description="storage stall / input pipeline / GPU contention / throttling GPU / "
                "job-wide slowdown (worsening?) / straggler",
)
