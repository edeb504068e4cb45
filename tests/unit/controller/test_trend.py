"""The pre-spike trend and the verdict on a rolled-back job, on real and constructed curves.

The real curves are bench/detectors/curves/real/*.jsonl: a GPT trained on an H100
(healthy; the same with three corrupted batches; a 10x learning rate; a run resumed from
an earlier checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import pytest

from sentinel.controller.timeline import (
    TimelineError,
    batches,
    lineage,
    lowest_rank,
    timelines,
    to_ranges,
)
from sentinel.controller.trend import VERIFY_WINDOW, TrendError, fit, judge
from sentinel.rules.jsonl import read_steps
from sentinel.rules.window import StepPoint

REAL = Path(__file__).resolve().parents[3] / "bench" / "detectors" / "curves" / "real"


def real(name: str) -> list[StepPoint]:
    return list(read_steps(REAL / f"{name}.jsonl"))


def resumed_from(points: list[StepPoint], start: int) -> list[StepPoint]:
    """Steps from ``start`` on, as the timeline of a job resumed there (no batch ids)."""
    return [dataclasses.replace(p, batch=None) for p in points if p.step >= start]


def test_the_trend_predicts_healthy_real_curves_within_its_tolerance():
    """Fitted before many would-be spikes, the healthy run's next steps are on trend."""
    pts = real("healthy")
    windows = failed = 0
    for lo in range(150, 900, 50):
        t = fit(pts, lo)
        first = True
        for w0 in range(lo, min(lo + 120, len(pts) - VERIFY_WINDOW), VERIFY_WINDOW):
            win = [p for p in pts if w0 <= p.step < w0 + VERIFY_WINDOW]
            ok = statistics.median(t.excess(p) for p in win) <= t.tolerance(win[10].step)
            assert ok or not first, f"first window after step {lo} off trend"
            windows, failed, first = windows + 1, failed + (not ok), False
    assert windows == 90 and failed <= 2  # within 120 steps of the fit: >= 97% on trend


def test_the_verdict_on_real_curves():
    bad = real("bad_batch")  # corrupted batches at steps 350, 600, 850
    t = fit(bad, 345)
    args = dict(to_step=345, skip=[], spike_end=351, verify_steps=200)
    # The healthy run of the same model is what a perfect rollback-and-skip gives.
    ok = judge(t, resumed_from(real("healthy"), 345), **args)
    assert ok.state == "passed" and ok.data["window"] == [352, 371], ok.summary
    # Resuming into the same bad batch: the spike comes back.
    again = judge(t, resumed_from(bad, 345), **args)
    assert again.state == "failed" and "spike came back at step 350" in again.summary
    # A 10x learning rate never gets near the healthy trend: a recurrence too.
    high = judge(t, resumed_from(real("high_lr"), 345), **args)
    assert high.state == "failed" and "spike came back" in high.summary


def _curve(step: int, scale: float = 1.0) -> float:
    return 6.0 * (step + 1) ** -0.2 * (1 + 0.02 * math.sin(step * 1.3)) * scale


def _pts(steps: range, scale: float = 1.0, shift: int = 0) -> list[StepPoint]:
    return [StepPoint(step=s, loss=_curve(s, scale), batch=s + shift if s >= 105 else s)
            for s in steps]


def test_the_verdict_on_constructed_curves():
    t = fit(_pts(range(0, 105)), 105)
    assert 0.02 < t.sigma < 0.03 and t.spike_band == pytest.approx(0.15)
    args = dict(to_step=100, skip=[(105, 140)], spike_end=130, verify_steps=60)
    # 2% above the trend is on it; the window starts past the skipped batches.
    ok = judge(t, _pts(range(100, 160), 1.02, shift=35), **args)
    assert ok.state == "passed" and ok.data["window"] == [105, 124]
    assert ok.data["past_skips_at"] == 105
    # 8% above: no spike, but not back either; pending until step 130 + 60, then failed.
    assert judge(t, _pts(range(100, 190), 1.08, shift=35), **args).state == "pending"
    off = judge(t, _pts(range(100, 195), 1.08, shift=35), **args)
    assert off.state == "failed" and "not back on its pre-spike trend 60 steps" in off.summary
    # A NaN loss is a recurrence.
    nan = _pts(range(100, 120), shift=35)
    nan[5] = dataclasses.replace(nan[5], loss=math.nan)
    assert "spike came back at step 105" in judge(t, nan, **args).summary
    assert judge(t, [], **args).state == "pending"


def test_a_trend_needs_steps_before_the_spike():
    with pytest.raises(TrendError, match="only 10 steps"):
        fit(_pts(range(0, 20)), 20)


# -- timelines ----------------------------------------------------------------------------


def test_lineage_follows_the_timeline_of_the_record_meant():
    """The real resumed run: steps 0-599, then 450-749 again from checkpoint 450."""
    pts = real("resumed")
    tls = timelines(pts)
    assert [(tl[0].step, tl[-1].step) for tl in tls] == [(0, 599), (450, 999)]
    first_500 = next(p for p in tls[0] if p.step == 500)
    old = lineage(pts, 500, first_500.time)
    assert [p.step for p in old] == list(range(0, 600))
    assert old[500] is first_500
    new = lineage(pts, 500)  # no time: the newest timeline with that step
    assert [p.step for p in new] == list(range(0, 1000))
    assert new[449] is tls[0][449] and new[500] is not first_500
    with pytest.raises(TimelineError, match="step 5000 is not in the job's step stream"):
        lineage(pts, 5000)


def test_lowest_rank_and_batches():
    two = [StepPoint(step=s, loss=1.0, rank=r, batch=s) for s in range(5) for r in (1, 0)]
    assert [p.rank for p in lowest_rank(two)] == [0] * 5
    chain = [StepPoint(step=s, loss=1.0, batch=b) for s, b in
             [(10, 10), (11, 11), (13, 13), (14, 20), (16, 23), (17, 24)]]
    # Step 14 trained batch 20: the job skipped 14-19 (its plan), which no step trained.
    assert batches(chain, 13, 14) == {13, 20}
    # Step 12's report was dropped between contiguous ids: exactly batch 12. Step 15's
    # was dropped where the ids jump by 3 in 2 steps: every id between is taken.
    assert batches(chain, 11, 16) == {11, 12, 13, 20, 21, 22, 23}
    assert batches(chain, 17, 19) == {24, 25, 26}  # 18, 19 not run yet: one id per step
    assert batches(chain, 8, 10) == {8, 9, 10}
    assert to_ranges({3, 4, 5, 9, 10, 12}, minus=[(4, 5)]) == [(3, 4), (5, 6), (9, 11),
                                                             (12, 13)]
