import pytest

from bench.detectors.scenarios import SCENARIOS, checkpoint_pauses, jitter
from bench.detectors.throughput import evaluate, score

SUSTAINED_DROP_BUDGET_S = 30.0
# A slowdown that grows by 1/600 of the step time a second hovers around the 10% line for
# a while after losing 10% (its baseline already holds the first, shallow part of it).
GROWING_BUDGET_S = 45.0


@pytest.mark.parametrize("make", [m for m in SCENARIOS if m not in (checkpoint_pauses, jitter)],
                         ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", range(3))
def test_drop_is_flagged_within_30s_with_the_right_diagnosis(make, seed):
    sc = make(seed)
    r = score(sc, evaluate(sc))
    budget = GROWING_BUDGET_S if sc.name == "growing_slowdown" else SUSTAINED_DROP_BUDGET_S
    assert r["delay_s"] is not None and r["delay_s"] <= budget, r
    assert r["right_cause"], r
    if sc.expected_node:
        assert r["right_node"], r
    if sc.worsening:
        assert r["worsening"], r


@pytest.mark.parametrize("make", [checkpoint_pauses, jitter], ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", range(5))
def test_no_alarm_on_checkpoint_pauses_or_jitter(make, seed):
    sc = make(seed)
    found = evaluate(sc)
    assert [f for f in found if f.kind == "throughput_drop"] == []


def test_straggler_alone_is_not_called_worsening_or_storage():
    from bench.detectors.scenarios import straggler
    found = evaluate(straggler(0))
    diag = [f for f in found if f.kind == "diagnosis"]
    assert {d.evidence["cause"] for d in diag} == {"straggler"}
    assert all(d.suggested_action == "spare_swap" for d in diag)


def test_a_gap_in_the_series_is_not_a_drop():
    """A requeued job reports nothing for 30 s; low samples either side are two dips."""
    from sentinel.rules.detectors import throughput_drop as td
    from sentinel.rules.window import Series, Window

    def job(points):
        return Window(series={"tokens_per_sec_cluster": [Series({}, points)],
                              "tokens_per_sec": []}, step_s=1.0)

    t = [float(i) for i in range(60)]
    before = [(x, 2000.0) for x in t] + [(60.0, 700.0), (61.0, 300.0)]
    # The restart's ramp: three low samples (the rate window filling up again).
    after = [(92.0, 400.0), (93.0, 900.0), (94.0, 1500.0)] + [
        (95.0 + i, 2000.0) for i in range(20)]
    params = td.Params(sustain_s=6.0, baseline_s=40.0)
    found = td.detect(job(before + after), params)
    assert found == []
    # The same low samples without the gap in between are a sustained drop.
    joined = before + [(62.0 + i, 400.0) for i in range(6)]
    (drop,) = td.detect(job(joined), params)
    assert drop.evidence["scope"] == "job" and drop.time_start == 60.0


def test_a_flat_job_wide_drop_is_not_called_worsening():
    """A 40% drop on every node that stays flat (jitter only) is a slowdown, not growing."""
    import numpy as np

    from bench.detectors.scenarios import NODES, T0, Scenario, _base, _idx, _latency, _pack
    for seed in range(5):
        rng = np.random.default_rng(seed)
        tps, lat = _base(rng, jitter=0.05), _latency(rng)
        for node in NODES:
            tps[node][_idx(T0 + 600):] *= 0.6
        found = evaluate(Scenario("flat", _pack(tps, lat), T0 + 600, "job_wide_slowdown"))
        diag = [f for f in found if f.kind == "diagnosis"]
        assert diag and all(d.evidence["worsening"] is False for d in diag), [
            d.evidence for d in diag]


def test_a_drop_says_when_it_started_as_a_time_of_day_not_an_epoch():
    from sentinel.rules.detectors.throughput_drop import _when
    assert _when(1795970688.0) == "16:44:48 UTC"
    assert _when(120.0) == "t=120"  # a trace on its own clock keeps its own numbers
