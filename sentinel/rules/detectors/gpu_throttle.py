"""Find GPUs throttled for much of the window, or running close to their slowdown temperature.

Throttle reasons are a bitmask: a GPU throttled for HW slowdown *and* power cap at
once has both bits set, so the check is ``mask & BAD_REASONS != 0`` (gpu-fryer's
equality test misses combined bits). Input either a bitmask series (value = mask) or
the agent's one-series-per-reason 0/1 gauges (label ``reason``), which are folded
back into a mask per GPU and timestamp. Reason names, bits and the default "bad" set
come from :mod:`sentinel.gpu.reasons`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.gpu.reasons import BAD_REASONS, CLOCK_EVENT_REASONS, mask
from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Series, Window, node_of

NAME = "gpu_throttle"

@dataclass
class Params:
    """Thresholds of the GPU-throttle detector."""

    min_fraction: float = field(
        default=0.5,
        metadata={"help": "share of the window's samples with a bad reason active; gpud calls "
                  "6 of the last 10 minutes unhealthy, half the window is as strict",
                  "min": 0.0, "max": 1.0},
    )
    reasons: list[str] = field(
        default_factory=lambda: list(BAD_REASONS),
        metadata={"help": "reasons that count", "choices": tuple(CLOCK_EVENT_REASONS)},
    )
    temperature_margin_c: float = field(
        default=5.0,
        metadata={"help": "within this many degrees of the slowdown temperature is 'close'",
                  "min": 0.0},
    )


def _gpu_key(s: Series) -> tuple[str, str, str]:
    return (node_of(s), s.labels.get("gpu", ""), s.labels.get("UUID", ""))


def _masks(series: list[Series]) -> dict[tuple[str, str, str], dict[float, int]]:
    out: dict[tuple[str, str, str], dict[float, int]] = {}
    for s in series:
        d = out.setdefault(_gpu_key(s), {})
        reason = s.labels.get("reason")
        for t, v in s.points:
            if v != v:  # NaN: no value
                continue
            if reason is not None:
                bit = CLOCK_EVENT_REASONS.get(reason, 0) if v > 0 else 0
                d[t] = d.get(t, 0) | bit
            else:
                d[t] = d.get(t, 0) | int(v)
    return out


def _expected_samples(window: Window, seen: int) -> int:
    # Rules may ask Prometheus only for samples where a reason is active (so the answer
    # grows with the problem, not the fleet); the window's length then gives the count.
    if window.step_s and window.range_s:
        return max(seen, int(window.range_s / window.step_s) + 1)
    return seen


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one finding per throttled GPU and per GPU close to its slowdown temperature."""
    p = params
    bad = mask(p.reasons)
    out: list[Finding] = []
    for (node, gpu, uuid), masks in sorted(_masks(window.role("clock_event_reasons")).items()):
        if not masks:
            continue
        total = _expected_samples(window, len(masks))
        hits = [m for m in masks.values() if m & bad]
        frac = len(hits) / total
        if frac < p.min_fraction or not hits:
            continue
        seen = sorted(r for r, bit in CLOCK_EVENT_REASONS.items() if any(m & bit for m in hits))
        times = sorted(t for t, m in masks.items() if m & bad)
        out.append(Finding(
            kind="gpu_throttle", severity="warning",
            summary=(f"GPU {gpu} on {node} throttled {frac:.0%} of the window "
                     f"({', '.join(seen)})"),
            suggested_action="burnin", detector=NAME, job=window.job or None, node=node,
            gpu=gpu or uuid, time_start=times[0], time_end=times[-1],
            confidence=min(1.0, 0.5 + frac / 2),
            evidence={"fraction": frac, "reasons": seen, "UUID": uuid},
        ))
    temps = {_gpu_key(s): s for s in window.role("temperature")}
    limits = {_gpu_key(s): s for s in window.role("slowdown_temperature")}
    for key, s in sorted(temps.items()):
        lim = limits.get(key)
        pts = s.finite()
        if lim is None or not pts or not lim.finite():
            continue
        limit = lim.finite()[-1][1]
        close = [t for t, v in pts if v >= limit - p.temperature_margin_c]
        frac = len(close) / len(pts)
        if frac >= p.min_fraction:
            node, gpu, uuid = key
            out.append(Finding(
                kind="gpu_hot", severity="warning",
                summary=(f"GPU {gpu} on {node} within {p.temperature_margin_c:.0f} C of its "
                         f"slowdown temperature {limit:.0f} C for {frac:.0%} of the window"),
                suggested_action="burnin", detector=NAME, job=window.job or None, node=node,
                gpu=gpu or uuid, time_start=close[0], time_end=close[-1], confidence=0.7,
                evidence={"fraction": frac, "slowdown_temperature_c": limit,
                          "max_temperature_c": max(v for _, v in pts), "UUID": uuid},
            ))
    return out


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect,
    inputs=("clock_event_reasons", "temperature", "slowdown_temperature"),
    required=("clock_event_reasons",),
    description="throttle reasons active for much of the window (any bad bit); hot GPUs",
)
