"""Score detectors on labeled curves: event matching, precision/recall/F1, delay.

Matching (also in docs/DESIGN.md): a detector's *alarm* is the first step of a run of
triggering steps (triggers less than ``MERGE_GAP`` steps apart are one alarm). An
alarm is a true positive if it falls in ``[start, end + TOLERANCE]`` of a labeled
event, otherwise a false alarm. An event is detected if at least one alarm falls in
that range; its delay is the first such alarm's step minus ``start``. Precision is
true alarms / alarms, recall is detected events / events. False alarms per 100k
healthy steps divide false alarms by the steps outside every event's range.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.detectors.corpus import Curve
from bench.detectors.peers import PEERS
from sentinel.rules.detectors import loss_spike
from sentinel.rules.window import StepPoint, Window

MERGE_GAP = 10
TOLERANCE = 10

Detector = Callable[[Curve], list[int]]


def alarms_from_triggers(steps: Iterable[int], merge_gap: int = MERGE_GAP) -> list[int]:
    """Merge triggering steps closer than ``merge_gap`` into alarms (their first step)."""
    out: list[int] = []
    last: int | None = None
    for s in steps:
        if last is None or s - last >= merge_gap or s < last:
            out.append(s)
        last = s
    return out


def peer_detector(cls: Any) -> Detector:
    """Wrap a peer class as curve -> alarm steps."""

    def run(curve: Curve) -> list[int]:
        det = cls()
        fired = [s for s, l_, g in zip(curve.steps, curve.loss, curve.grad_norm, strict=True)
                 if det.feed(s, l_, g)]
        return alarms_from_triggers(fired)

    return run


def sentinel_detector(params: loss_spike.Params | None = None) -> Detector:
    """Wrap sentinel's loss_spike detector: an alarm is each finding's detected step."""
    p = params or loss_spike.Params()

    def run(curve: Curve) -> list[int]:
        pts = [StepPoint(step=s, loss=l_, grad_norm=g)
               for s, l_, g in zip(curve.steps, curve.loss, curve.grad_norm, strict=True)]
        found = loss_spike.detect(Window(job=curve.name, steps=pts), p)
        return [int(f.evidence["detected_step"]) for f in found]

    return run


def detectors() -> dict[str, Detector]:
    """Return sentinel and every peer, by name."""
    out: dict[str, Detector] = {"sentinel": sentinel_detector()}
    for cls in PEERS:
        out[cls.name] = peer_detector(cls)
    return out


@dataclass
class Tally:
    """Counts for one detector on one family."""

    events: int = 0
    detected: int = 0
    alarms: int = 0
    true_alarms: int = 0
    false_alarms: int = 0
    healthy_steps: int = 0
    delays: list[int] = field(default_factory=list)
    false_alarm_curves: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.events += other.events
        self.detected += other.detected
        self.alarms += other.alarms
        self.true_alarms += other.true_alarms
        self.false_alarms += other.false_alarms
        self.healthy_steps += other.healthy_steps
        self.delays += other.delays
        self.false_alarm_curves += other.false_alarm_curves
        self.missed += other.missed

    def metrics(self) -> dict[str, Any]:
        precision = self.true_alarms / self.alarms if self.alarms else (
            1.0 if self.events == 0 or self.detected else 0.0)
        recall = self.detected / self.events if self.events else None
        if recall is None:
            f1 = None
        elif precision + recall == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        return {
            "events": self.events,
            "detected": self.detected,
            "alarms": self.alarms,
            "false_alarms": self.false_alarms,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "false_alarms_per_100k": (
                1e5 * self.false_alarms / self.healthy_steps if self.healthy_steps else 0.0),
            "median_delay_steps": statistics.median(self.delays) if self.delays else None,
            "max_delay_steps": max(self.delays) if self.delays else None,
        }


def score_curve(curve: Curve, alarms: list[int], tolerance: int = TOLERANCE) -> Tally:
    """Match alarms to the curve's events."""
    t = Tally(events=len(curve.events), alarms=len(alarms))
    ranges = [(e.start, e.end + tolerance) for e in curve.events]
    for a in alarms:
        if any(lo <= a <= hi for lo, hi in ranges):
            t.true_alarms += 1
        else:
            t.false_alarms += 1
            t.false_alarm_curves.append(f"{curve.name}@{a}")
    for e, (lo, hi) in zip(curve.events, ranges, strict=True):
        hits = [a for a in alarms if lo <= a <= hi]
        if hits:
            t.detected += 1
            t.delays.append(min(hits) - e.start)
        else:
            t.missed.append(f"{curve.name}@{e.start}")
    t.healthy_steps = sum(1 for s in curve.steps if not any(lo <= s <= hi for lo, hi in ranges))
    return t


def run_benchmark(
    curves: list[Curve], dets: dict[str, Detector] | None = None
) -> dict[str, Any]:
    """Run every detector on every curve; return per-family and overall metrics."""
    dets = dets or detectors()
    families = sorted({c.family for c in curves})
    result: dict[str, Any] = {"families": {}, "overall": {}, "seconds": {}, "details": {}}
    for name, det in dets.items():
        overall = Tally()
        t0 = time.perf_counter()
        per_fam: dict[str, Tally] = {f: Tally() for f in families}
        for c in curves:
            per_fam[c.family].add(score_curve(c, det(c)))
        result["seconds"][name] = time.perf_counter() - t0
        for f, tally in per_fam.items():
            result["families"].setdefault(f, {})[name] = tally.metrics()
            overall.add(tally)
        result["overall"][name] = overall.metrics()
        result["details"][name] = {
            "false_alarms": overall.false_alarm_curves[:50],
            "missed": overall.missed[:50],
        }
    result["curves"] = {f: sum(1 for c in curves if c.family == f) for f in families}
    result["steps"] = {f: sum(len(c.steps) for c in curves if c.family == f) for f in families}
    return result


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if not pct else f"{v:.1f}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    """Render the result as markdown tables: per family, then overall."""
    names = list(result["overall"])
    lines = [
        "| family | curves | detector | precision | recall | F1 | false alarms /100k healthy "
        "steps | median delay (steps) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fam, per in result["families"].items():
        for n in names:
            m = per[n]
            lines.append(
                f"| {fam} | {result['curves'][fam]} | {n} | {_fmt(m['precision'])} | "
                f"{_fmt(m['recall'])} | {_fmt(m['f1'])} | "
                f"{_fmt(m['false_alarms_per_100k'], pct=True)} | {_fmt(m['median_delay_steps'])} |"
            )
    lines += ["", "| overall | precision | recall | F1 | false alarms /100k healthy steps | "
              "median delay | seconds |", "|---|---|---|---|---|---|---|"]
    for n in names:
        m = result["overall"][n]
        lines.append(
            f"| {n} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | "
            f"{_fmt(m['false_alarms_per_100k'], pct=True)} | {_fmt(m['median_delay_steps'])} | "
            f"{result['seconds'][n]:.2f} |"
        )
    return "\n".join(lines)


def _cell(m: dict[str, Any]) -> str:
    if not m["events"]:
        return f"{m['false_alarms']} FA"
    delay = "—" if m["median_delay_steps"] is None else f"{m['median_delay_steps']:g}"
    fa = f", {m['false_alarms']} FA" if m["false_alarms"] else ""
    return f"{m['f1']:.2f} ({m['detected']}/{m['events']}, d {delay}{fa})"


def pivot(result: dict[str, Any]) -> str:
    """Render one row per family (and overall), one column per detector."""
    names = list(result["overall"])
    lines = ["| family | curves | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for fam, per in result["families"].items():
        lines.append(f"| {fam} | {result['curves'][fam]} | "
                     + " | ".join(_cell(per[n]) for n in names) + " |")
    total = sum(result["curves"].values())
    lines.append(f"| **overall** | {total} | "
                 + " | ".join(_cell(result["overall"][n]) for n in names) + " |")
    return "\n".join(lines)
