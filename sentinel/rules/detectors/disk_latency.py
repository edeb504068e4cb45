"""Find disk read latency far above the node's own baseline (storage stalls)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.rules.detectors._episodes import find_episodes
from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Window, node_of

NAME = "disk_latency"


@dataclass
class Params:
    """Thresholds of the disk-latency detector."""

    factor: float = field(
        default=4.0,
        metadata={"help": "latency this many times the node's own baseline is high: shard "
                  "evictions from a network cache show as 10-100x, normal load well under 2x",
                  "min": 1.0},
    )
    min_latency_s: float = field(
        default=0.01,
        metadata={"help": "and at least this high (seconds): below 10 ms a read cannot stall a "
                  "dataloader that prefetches", "min": 0.0},
    )
    sustain_s: float = field(
        default=30.0, metadata={"help": "seconds of samples that must be high", "min": 1.0},
    )
    fraction: float = field(
        default=0.6, metadata={"help": "share of the sustain window that must be high",
                               "min": 0.1, "max": 1.0},
    )
    baseline_s: float = field(
        default=300.0, metadata={"help": "seconds of normal samples in the baseline",
                                 "min": 10.0},
    )


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one finding per (node, device) latency episode."""
    p = params
    out: list[Finding] = []
    for s in window.role("disk_read_latency"):
        node = node_of(s) or "?"
        device = s.labels.get("device", "")
        # The agent exports 0 for an interval without reads: no latency was measured
        # then, and an idle disk's zeros must not make the baseline (or the ratio) 0.
        measured = [(t, v) for t, v in s.points if v > 0]
        for e in find_episodes(
            measured,
            is_bad=lambda v, b: v > max(p.factor * b, p.min_latency_s),
            baseline_s=p.baseline_s, sustain_s=p.sustain_s, fraction=p.fraction,
            step_s=window.step_s, worse=lambda a, b: a > b,
        ):
            if e.flagged is None:
                continue
            out.append(Finding(
                kind="disk_latency", severity="warning",
                summary=(f"read latency on {node} {device} at {e.worst * 1000:.0f} ms, "
                         f"{e.worst / max(e.baseline, 1e-9):.0f}x its baseline "
                         f"{e.baseline * 1000:.1f} ms"),
                suggested_action="notify", detector=NAME, job=window.job or None, node=node,
                time_start=e.start, time_end=e.end if e.end is not None else e.last_bad,
                confidence=0.8,
                evidence={"device": device, "baseline_s": e.baseline, "peak_s": e.worst,
                          "flagged_at": e.flagged},
                state="resolved" if e.end is not None else "firing",
                episode=f"{device}@{e.start:.0f}",
            ))
    return out


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect, inputs=("disk_read_latency",),
    required=("disk_read_latency",),
    description="disk read latency far above the node's own baseline",
)
