"""Throughput scenarios at 5 s resolution, from the playbook, with the expected diagnosis.

Each scenario is a set of per-node tokens/sec series (plus disk latency, throttle
reasons) over 20 minutes; ``drop_start`` is when the problem starts (None: healthy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sentinel.rules.window import Series

RES = 5.0
T0 = 1_700_000_000.0
DURATION = 1200.0
NODES = [f"node{i:02d}" for i in range(8)]
PER_NODE = 50_000.0  # tokens/sec of a healthy node


@dataclass
class Scenario:
    """Series for one scenario and what a correct detector says about it."""

    name: str
    series: dict[str, list[Series]]
    drop_start: float | None
    expected_cause: str | None
    expected_node: str | None = None
    worsening: bool = False
    notes: list[str] = field(default_factory=list)


def _times() -> np.ndarray:
    return T0 + np.arange(0, DURATION, RES)


def _series(name: str, node: str, values: np.ndarray, **labels: str) -> Series:
    return Series(labels={"__name__": name, "hostname": node, **labels},
                  points=[(float(t), float(v)) for t, v in zip(_times(), values, strict=True)])


def _base(rng: np.random.Generator, jitter: float = 0.03) -> dict[str, np.ndarray]:
    n = len(_times())
    return {node: PER_NODE * (1 + rng.normal(0, jitter, n)) for node in NODES}


def _latency(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(_times())
    return {node: 0.002 * np.exp(rng.normal(0, 0.2, n)) for node in NODES}


def _pack(tps: dict[str, np.ndarray], lat: dict[str, np.ndarray] | None = None,
          throttle: dict[str, np.ndarray] | None = None) -> dict[str, list[Series]]:
    out: dict[str, list[Series]] = {
        "tokens_per_sec": [_series("tps", n, v) for n, v in tps.items()]}
    if lat is not None:
        out["disk_read_latency"] = [_series("lat", n, v, device="nvme0n1") for n, v in lat.items()]
    if throttle is not None:
        out["clock_event_reasons"] = [_series("reasons", n, v, gpu="3", UUID=f"GPU-{n}-3")
                                      for n, v in throttle.items()]
    return out


def _idx(t: float) -> int:
    return int((t - T0) / RES)


def storage_stall(seed: int = 0) -> Scenario:
    """Shard eviction: every node's throughput falls 40% while disk latency jumps 30x."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    s = T0 + 700.0
    for node in NODES:
        tps[node][_idx(s):_idx(s + 180)] *= 0.6
        lat[node][_idx(s) - 1:_idx(s + 180)] *= 30
    return Scenario("storage_stall", _pack(tps, lat), s, "storage_stall")


def job_wide_worsening(seed: int = 0) -> Scenario:
    """Dataloader: drops on every node, deeper and longer as the run goes on, hardware fine."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    starts = [360.0, 620.0, 820.0, 980.0, 1100.0]
    for k, st in enumerate(starts):
        dur, depth = 15.0 + 15.0 * k, 0.15 + 0.08 * k
        for node in NODES:
            tps[node][_idx(T0 + st):_idx(T0 + st + dur)] *= 1 - depth
    sc = Scenario("job_wide_worsening", _pack(tps, lat), T0 + starts[1], "job_wide_slowdown",
                  worsening=True)
    sc.notes.append("early dips are too short to be drops; the sustained ones start at the 2nd")
    return sc


def gpu_contention(seed: int = 0) -> Scenario:
    """Another process starts on GPU 5 of node02: the job (synchronous) slows 40%."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    s = T0 + 700.0
    for node in NODES:
        tps[node][_idx(s):_idx(s + 240)] *= 0.6
    sc = Scenario("gpu_contention", _pack(tps, lat), s, "gpu_contention", "node02")
    extra = np.zeros(len(_times()))
    extra[_idx(s) - 1:_idx(s + 240)] = 1.0  # one process beyond the job's ranks
    # As the shipped rule asks for it: only the GPU's samples above 0 come back.
    sc.series["extra_processes"] = [Series(
        labels={"hostname": "node02", "gpu": "5", "UUID": "GPU-node02-5"},
        points=[(float(t), 1.0) for t, v in zip(_times(), extra, strict=True) if v > 0])]
    return sc


def growing_slowdown(seed: int = 0) -> Scenario:
    """Dataloader whose per-step cost grows: from minute 10 each step a little slower, half
    the speed 10 minutes later; hardware fine. The drop "starts" where 10% is lost."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    s, grow = T0 + 600.0, 1 / 600.0  # step time x(1 + grow * seconds since s)
    t = _times()
    slow = np.where(t >= s, 1 / (1 + grow * np.clip(t - s, 0, None)), 1.0)
    for node in NODES:
        tps[node] *= slow
    ten = s + (1 / 0.9 - 1) / grow
    return Scenario("growing_slowdown", _pack(tps, lat), ten, "job_wide_slowdown",
                    worsening=True)


def throttled_gpu(seed: int = 0) -> Scenario:
    """One GPU of node03 hits HW slowdown + power cap (combined bits); the job slows 25%."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    s = T0 + 700.0
    for node in NODES:
        tps[node][_idx(s):] *= 0.75
    n = len(_times())
    throttle = {node: np.zeros(n) for node in NODES}
    throttle["node03"][_idx(s):] = 0x8 | 0x4  # hw_slowdown + sw_power_cap together
    return Scenario("throttled_gpu", _pack(tps, lat, throttle), s, "throttling_gpu", "node03")


def straggler(seed: int = 0) -> Scenario:
    """node05 runs 20% slower than its peers from minute 11, with no hardware signal."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    s = T0 + 660.0
    tps["node05"][_idx(s):] *= 0.8
    n = len(_times())
    return Scenario("straggler", _pack(tps, lat, {node: np.zeros(n) for node in NODES}), s,
                    "straggler", "node05")


def checkpoint_pauses(seed: int = 0) -> Scenario:
    """A 15 s checkpoint save every 4 minutes: throughput near zero, then back. Not a drop."""
    rng = np.random.default_rng(seed)
    tps, lat = _base(rng), _latency(rng)
    for st in np.arange(240.0, DURATION, 240.0):
        for node in NODES:
            tps[node][_idx(T0 + st):_idx(T0 + st + 15)] *= 0.05
    return Scenario("checkpoint_pauses", _pack(tps, lat), None, None)


def jitter(seed: int = 0) -> Scenario:
    """Normal jitter (+-5% per sample, per node): no alarm."""
    rng = np.random.default_rng(seed)
    return Scenario("jitter", _pack(_base(rng, jitter=0.05), _latency(rng)), None, None)


SCENARIOS = (storage_stall, job_wide_worsening, growing_slowdown, gpu_contention, throttled_gpu,
             straggler, checkpoint_pauses, jitter)


def first_sustained_drop(values: list[float], start: float) -> float:
    """Return the smallest flagged time >= start in a list (math.inf if none)."""
    later = [v for v in values if v >= start]
    return min(later) if later else math.inf
