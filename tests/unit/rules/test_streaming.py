"""The streamed detectors (``sentinel detect FILE``) find what the window detectors find."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from sentinel.rules.detectors import job_stalled, loss_spike, throughput_drop
from sentinel.rules.detectors._episodes import Episode, find_episodes, resolution
from sentinel.rules.detectors._rolling import MedianSketch, median
from sentinel.rules.jsonl import read_steps
from sentinel.rules.window import Series, StepPoint, Window

REAL = Path(__file__).resolve().parents[3] / "bench" / "detectors" / "curves" / "real"


def reference_episodes(
    points: list[tuple[float, float]], *, is_bad: Callable[[float, float], bool],
    baseline_s: float, sustain_s: float, fraction: float, step_s: float | None = None,
    fixed_baseline: float | None = None, min_baseline_samples: int = 4,
    worse: Callable[[float, float], bool] = lambda a, b: a < b,
) -> list[Episode]:
    """find_episodes as it was before it streamed: rescans the good samples each time."""
    pts = [(t, v) for t, v in points if math.isfinite(v)]
    if not pts:
        return []
    res = resolution(pts, step_s)
    k = max(2, round(sustain_s / res))
    need = math.ceil(fraction * k)
    good: list[tuple[float, float]] = []
    recent: list[bool] = []
    out: list[Episode] = []
    cur: Episode | None = None
    dip_close = max(1, k - need + 1)
    good_run = 0
    first_good = 0.0
    for t, v in pts:
        if fixed_baseline is not None:
            base: float | None = fixed_baseline
        elif cur is not None:
            base = cur.baseline
        else:
            lo, hi = t - sustain_s - baseline_s, t - sustain_s
            ref = [x for tt, x in good if lo <= tt < hi]
            base = median(ref) if len(ref) >= min_baseline_samples else None
        if base is None:
            good.append((t, v))
            continue
        bad = is_bad(v, base)
        recent.append(bad)
        if len(recent) > k:
            recent.pop(0)
        if bad:
            good_run = 0
            if cur is None:
                cur = Episode(start=t, end=None, flagged=None, baseline=base, worst=v, last_bad=t)
            cur.last_bad = t
            if worse(v, cur.worst):
                cur.worst = v
            if cur.flagged is None and len(recent) == k and sum(recent) >= need:
                cur.flagged = t
        else:
            good.append((t, v))
            if good_run == 0:
                first_good = t
            good_run += 1
            if cur is not None:
                if cur.flagged is None:
                    if good_run >= dip_close:
                        cur.end = first_good
                        out.append(cur)
                        cur = None
                elif len(recent) == k and k - sum(recent) >= need:
                    cur.end = t
                    out.append(cur)
                    cur = None
        while good and good[0][0] < t - sustain_s - baseline_s - res:
            good.pop(0)
    if cur is not None:
        out.append(cur)
    return out


def _series(seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    pts, t = [], 0.0
    for i in range(3000):
        t += 5 + rng.uniform(-0.5, 0.5)
        v = 1000 * (1 + rng.uniform(-0.03, 0.03))
        if i % 400 in range(100, 100 + 20 * (seed % 4)):
            v *= 0.8 - 0.05 * (i % 3)
        if i % 97 == 0:
            v *= 0.5
        pts.append((t, v if i % 500 else math.nan))
    return pts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fixed", [None, 1000.0])
def test_episode_finder_matches_the_rescanning_version(seed: int, fixed: float | None) -> None:
    kw = {"is_bad": lambda v, b: v < 0.9 * b, "baseline_s": 300.0, "sustain_s": 30.0,
          "fraction": 0.8, "fixed_baseline": fixed}
    pts = _series(seed)
    assert find_episodes(pts, **kw) == reference_episodes(pts, **kw)  # type: ignore[arg-type]


def _fed(stream: loss_spike.Stream | job_stalled.Stream | throughput_drop.Stream,
         steps: list[StepPoint]) -> list[dict]:
    for pt in steps:
        stream.feed(pt)
    return [f.to_dict() for f in stream.finish()]


@pytest.mark.parametrize("name", ["bad_batch", "resumed", "high_lr", "healthy"])
def test_streamed_loss_spike_matches_the_window_detector(name: str) -> None:
    steps = read_steps(REAL / f"{name}.jsonl")
    p = loss_spike.Params()
    window = [f.to_dict() for f in loss_spike.detect(Window(job="j", steps=steps), p)]
    assert _fed(loss_spike.Stream(p, "j"), steps) == window


def test_streamed_loss_spike_merges_ranks_like_the_window_detector() -> None:
    rng = random.Random(3)
    steps = [StepPoint(step=s, loss=2 + rng.gauss(0, 0.01) + (3 if s == 300 else 0),
                       grad_norm=rng.choice([None, 1.0]), time=1000 + s + r / 10, rank=r)
             for s in range(600) for r in range(4)]
    p = loss_spike.Params()
    window = [f.to_dict() for f in loss_spike.detect(Window(job="j", steps=steps), p)]
    assert window and _fed(loss_spike.Stream(p, "j"), steps) == window


def test_a_stream_keeps_at_most_so_many_events() -> None:
    steps = [StepPoint(step=s, loss=2.0 * (3 if s % 100 == 50 else 1) + 0.001 * (s % 7))
             for s in range(1000)]
    tr = loss_spike._Tracker(loss_spike.Params(), max_events=3)
    for pt in steps:
        tr.feed(pt)
    assert len(tr.events) == 3 and tr.dropped_events == 7


def test_non_positive_losses_are_not_judged() -> None:
    steps = [StepPoint(step=s, loss=2.0 if s % 50 else -1.0) for s in range(400)]
    tr = loss_spike._Tracker(loss_spike.Params())
    for pt in steps:
        tr.feed(pt)
    assert tr.events == [] and tr.nonpositive == 8


def test_streamed_job_stalled_matches_the_window_detector() -> None:
    rng = random.Random(5)
    t, steps = 0.0, []
    for s in range(3000):
        t += 0.5 + rng.uniform(-0.05, 0.05) + (200 if s in (700, 2100) else 0)
        steps += [StepPoint(step=s, loss=2.0, time=t + r / 1000, rank=r) for r in range(2)]
    p = job_stalled.Params()
    window = [f.to_dict() for f in job_stalled.detect(Window(job="j", steps=steps), p)]
    assert len(window) == 2 and _fed(job_stalled.Stream(p, "j"), steps) == window


def test_streamed_throughput_matches_the_series_detector() -> None:
    """The same samples as step records (streamed) and as Prometheus series (window)."""
    rng = random.Random(9)
    steps, by_node = [], {n: [] for n in "abcd"}
    for i in range(900):
        for n in "abcd":
            t = 1000 + 2.0 * i
            v = 1000 * (1 + rng.uniform(-0.03, 0.03)) * (0.75 if n == "b" and 300 <= i < 400
                                                         else 1.0) * (0.6 if 600 <= i < 650
                                                                      else 1.0)
            steps.append(StepPoint(step=i, loss=2.0, tokens_per_sec=v, time=t, node=n))
            by_node[n].append((t, v))
    p = throughput_drop.Params()
    series = [Series({"hostname": n}, pts) for n, pts in by_node.items()]
    window = [f.to_dict() for f in throughput_drop.detect(
        Window(job="j", series={"tokens_per_sec": series}), p)]
    streamed = _fed(throughput_drop.Stream(p, "j"), steps)
    assert {f["evidence"]["scope"] for f in window} == {"job", "node"}
    # Only step records say at which step a drop was flagged (the newest in its bucket).
    for f in streamed:
        assert f.pop("detected_step") == round(f["detected_at"] - 1000) // 2
    assert [f.pop("detected_step") for f in window] == [None] * len(window)
    assert streamed == window


def test_median_sketch_is_exact_then_within_a_thousandth() -> None:
    rng = random.Random(2)
    values = [rng.lognormvariate(0, 1) for _ in range(5000)]
    small = MedianSketch(exact=10_000)
    big = MedianSketch(exact=1000)
    for v in values:
        small.add(v)
        big.add(v)
    truth = statistics.median(values)
    assert small.median() == truth
    assert abs(big.median() / truth - 1) < 1e-3
    zeros = MedianSketch(exact=10)
    for v in [0.0] * 30 + [1.0] * 20:
        zeros.add(v)
    assert zeros.median() == 0.0


def test_a_cluster_series_alone_is_still_judged_not_taken_for_steps() -> None:
    """Prometheus may return no slow node, only the cluster median: the job drop counts."""
    pts = [(1000 + 5.0 * i, 1000.0 * (0.6 if 150 <= i < 200 else 1.0)) for i in range(300)]
    window = Window(job="j", series={"tokens_per_sec_cluster": [Series({}, pts)]}, step_s=5.0)
    (f,) = throughput_drop.detect(window, throughput_drop.Params())
    assert f.evidence["scope"] == "job" and f.time_start == 1750.0
