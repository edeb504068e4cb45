import pytest

from bench.detectors.scenarios import SCENARIOS, checkpoint_pauses, jitter
from bench.detectors.throughput import evaluate, score

SUSTAINED_DROP_BUDGET_S = 30.0


@pytest.mark.parametrize("make", [m for m in SCENARIOS if m not in (checkpoint_pauses, jitter)],
                         ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", range(3))
def test_drop_is_flagged_within_30s_with_the_right_diagnosis(make, seed):
    sc = make(seed)
    r = score(sc, evaluate(sc))
    assert r["delay_s"] is not None and r["delay_s"] <= SUSTAINED_DROP_BUDGET_S, r
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
