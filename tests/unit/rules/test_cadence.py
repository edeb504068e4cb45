"""Per-rule cadence: each rule runs at its own interval; a rule not due keeps its findings
firing and still informs the diagnosis; a rule's interval is checked when the file is read.
"""

from __future__ import annotations

import pytest

from sentinel.config import ConfigError
from sentinel.rules.engine import Engine
from sentinel.rules.rulefile import STEPS_INTERVAL_S, parse_rules
from sentinel.rules.window import Series, Window

T0 = 1000.0


def _straggler() -> Window:
    """Four nodes' tokens/s; n2 runs 30% slow in the last 39 samples (5 s apart)."""
    series = []
    for n in range(4):
        pts = [(T0 + 5 * i, 100.0 * (0.7 if n == 2 and i > 80 else 1.0)) for i in range(120)]
        series.append(Series({"hostname": f"n{n}"}, pts))
    return Window(job="j", series={"tokens_per_sec": series}, step_s=5.0)


def _gpu_lost(down: bool) -> Window:
    """n2's GPU 1 gone (gpu_up 0) through the straggler's slow stretch, or back."""
    pts = [(T0 + 5 * i, 0.0 if down else 1.0) for i in range(80, 120)]
    return Window(series={"gpu_up": [Series({"hostname": "n2", "gpu": "1"}, pts)]}, step_s=5.0)


RULES = {"rules": [
    {"name": "tp", "detector": "throughput_drop", "series": {"tokens_per_sec": "x"},
     "interval": "2s"},
    {"name": "gpu", "detector": "gpu_errors", "series": {"gpu_up": "y"}},
    {"name": "diag", "detector": "diagnosis"},
]}


def _causes(eng: Engine) -> list[str]:
    return [f.evidence["cause"] for f in eng.firing() if f.kind == "diagnosis"]


def test_a_rule_not_due_keeps_its_finding_and_still_names_the_cause():
    eng = Engine(parse_rules(RULES), fetch_threads=1, interval_s=15.0)
    gpu_down = {"v": True}
    fetched: list[tuple[str, float]] = []

    def fetch(rule, now):
        fetched.append((rule.name, now))
        return _straggler() if rule.name == "tp" else _gpu_lost(gpu_down["v"])

    first = eng.evaluate(fetch, now=2000.0)
    assert sorted(f.kind for f in first) == ["diagnosis", "gpu_lost", "throughput_drop"]
    assert _causes(eng) == ["throttling_gpu"]
    # 2 s later only tp is due; the GPU rule's finding is neither resolved nor forgotten
    # by the diagnosis (without it the drop would now be called a straggler).
    assert eng.evaluate(fetch, now=2002.0) == []
    assert eng.tried == {"tp"}
    assert sorted(f.kind for f in eng.firing()) == ["diagnosis", "gpu_lost", "throughput_drop"]
    assert _causes(eng) == ["throttling_gpu"]
    # The GPU comes back; the rule is not due until 2015: nothing changes before.
    gpu_down["v"] = False
    for now in (2004.0, 2006.0, 2014.0):
        assert eng.evaluate(fetch, now=now) == [], now
    assert eng.evaluate(fetch, now=2014.5) == []  # nothing due at all: nothing run
    assert eng.tried == set()
    changes = eng.evaluate(fetch, now=2015.0)  # the GPU rule's turn; tp's is at 2016
    assert eng.tried == {"gpu"}
    assert sorted((f.kind, f.state, f.evidence.get("cause")) for f in changes) == [
        ("diagnosis", "firing", "straggler"), ("diagnosis", "resolved", "throttling_gpu"),
        ("gpu_lost", "resolved", None)]
    assert [t for name, t in fetched if name == "gpu"] == [2000.0, 2015.0]
    assert [t for name, t in fetched if name == "tp"] == [
        2000.0, 2002.0, 2004.0, 2006.0, 2014.0]


def test_due_times_follow_each_rules_interval():
    rules = parse_rules({"rules": [
        {"name": "series", "detector": "gpu_errors", "series": {"gpu_up": "y"}},
        {"name": "steps", "detector": "loss_spike"},
        {"name": "slow", "detector": "gpu_errors", "series": {"gpu_up": "y"}, "interval": "1m"},
        {"name": "diag", "detector": "diagnosis"},
    ]})
    every = {r.name: r.every(15.0) for r in rules}
    assert every == {"series": 15.0, "steps": STEPS_INTERVAL_S, "slow": 60.0, "diag": None}
    # A driver cycling faster than the steps default runs its steps rules every cycle.
    assert {r.name: r.every(1.0) for r in rules}["steps"] == 1.0
    # Without a cycle every rule without its own interval runs at every evaluation.
    assert {r.name: r.every(None) for r in rules} == {
        "series": None, "steps": None, "slow": 60.0, "diag": None}

    eng = Engine([r for r in rules if r.name != "steps"], fetch_threads=1, interval_s=15.0)
    assert eng.next_due() == float("-inf")  # never run: due now

    def fetch(rule, now):
        return Window(series={"gpu_up": []})

    eng.evaluate(fetch, now=100.0)
    assert eng.tried == {"series", "slow"} and eng.next_due() == 115.0
    eng.evaluate(fetch, now=114.995)  # within the slack: due (a sleep that woke early)
    assert eng.tried == {"series"} and eng.next_due() == 129.995
    eng.evaluate(fetch, now=129.0)
    assert eng.tried == set()
    eng.evaluate(fetch, now=160.0)
    assert eng.tried == {"series", "slow"}
    assert Engine(rules[:1], interval_s=None).next_due() is None  # no cadence: the caller's


@pytest.mark.parametrize(("rule", "words"), [
    ({"name": "r", "detector": "loss_spike", "interval": "0s"}, "rules[0] (r).interval: '0s'"),
    ({"name": "r", "detector": "loss_spike", "interval": "soon"}, "is not a duration"),
    ({"name": "r", "detector": "loss_spike", "interval": "100ms"}, "0.5s to 3600s"),
    ({"name": "r", "detector": "loss_spike", "interval": "2h", "window": "3h"},
     "out of range"),
    ({"name": "r", "detector": "loss_spike", "interval": "20m", "window": "10m"},
     "longer than the rule's window"),
    ({"name": "d", "detector": "diagnosis", "interval": "5s"}, "takes no interval"),
])
def test_a_bad_interval_is_refused_with_what_is_valid(rule, words):
    with pytest.raises(ConfigError) as e:
        parse_rules({"rules": [rule]})
    assert words in str(e.value) and "valid" in str(e.value)


def test_an_interval_in_the_file_is_the_rules_own():
    (r,) = parse_rules({"rules": [{"name": "r", "detector": "loss_spike", "interval": "5s"}]})
    assert r.interval_s == 5.0 and r.every(15.0) == 5.0 and r.every(None) == 5.0
