"""The step ring and the token rate: fixed bytes whatever is reported."""

from __future__ import annotations

import math

import pytest

from sentinel.agent.ring import RATE_BUCKETS, RECORD_BYTES, Record, StepRing, TokenRate, records


def rec(i: int, **kw) -> Record:
    base = {"seq": i, "step": i, "rank": 3, "loss": 1.5, "grad_norm": 0.5, "tokens": 7,
            "samples": 2, "batch": i, "time": 100.0 + i}
    return Record(**{**base, **kw})


def test_the_ring_keeps_the_newest_records_in_fixed_bytes():
    ring = StepRing(5)
    for i in range(3):
        ring.append(rec(i))
    assert [r.step for r in records(ring.snapshot())] == [0, 1, 2]
    for i in range(3, 12):
        ring.append(rec(i))
    assert len(ring) == 5 and ring.nbytes == 5 * RECORD_BYTES
    got = list(records(ring.snapshot()))
    assert [r.step for r in got] == [7, 8, 9, 10, 11]
    assert got[0] == rec(7)


def test_absent_values_stay_absent_and_nan_stays_nan():
    ring = StepRing(4)
    ring.append(rec(0, grad_norm=None, samples=None, batch=None))
    ring.append(rec(1, loss=math.nan, grad_norm=math.inf, samples=0, batch=0, data_s=0.0))
    ring.append(rec(2, data_s=0.125))
    a, b, c = records(ring.snapshot())
    assert (a.grad_norm, a.samples, a.batch, a.data_s) == (None, None, None, None)
    assert math.isnan(b.loss) and b.grad_norm == math.inf and (b.samples, b.batch) == (0, 0)
    assert (b.data_s, c.data_s) == (0.0, 0.125)  # a zero wait is a wait, not "absent"


def test_token_rate_over_the_window_with_the_oldest_slice_pro_rata():
    r = TokenRate(window=64.0)  # 1 s slices
    for t in range(200):  # 100 tokens/s for 200 s
        r.add(1000.0 + t, 100)
    assert r.total(1200.0) == pytest.approx(6400, rel=0.02)
    assert r.total(1200.0 + 64.0) == pytest.approx(0, abs=100)  # silence empties it
    assert len(r._ids) == len(r._sums) == RATE_BUCKETS + 1
