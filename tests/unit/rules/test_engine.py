from sentinel.rules.engine import Engine
from sentinel.rules.finding import Finding
from sentinel.rules.rulefile import parse_rules
from sentinel.rules.window import Series, Window


def straggler_window(slow: bool) -> Window:
    t0 = 1000.0
    series = []
    for n in range(4):
        factor = 0.7 if (slow and n == 2) else 1.0
        pts = [(t0 + 5 * i, 100.0 * (factor if i > 80 else 1.0)) for i in range(120)]
        series.append(Series({"hostname": f"n{n}"}, pts))
    return Window(job="j", series={"tokens_per_sec": series}, step_s=5.0)


def test_engine_reports_new_once_then_resolved_when_gone():
    rules = parse_rules({"rules": [
        {"name": "tp", "detector": "throughput_drop", "series": {"tokens_per_sec": "x"}},
        {"name": "diag", "detector": "diagnosis"},
    ]})
    eng = Engine(rules)
    slow = {"v": True}

    def fetch(rule, now):
        return straggler_window(slow["v"])

    first = eng.evaluate(fetch, now=2000.0)
    kinds = sorted((f.kind, f.state) for f in first)
    assert kinds == [("diagnosis", "firing"), ("throughput_drop", "firing")]
    assert [f.node for f in first if f.kind == "diagnosis"] == ["n2"]
    assert eng.evaluate(fetch, now=2015.0) == []  # same problem: nothing new
    slow["v"] = False
    gone = eng.evaluate(fetch, now=2030.0)
    assert sorted((f.kind, f.state) for f in gone) == [("diagnosis", "resolved"),
                                                       ("throughput_drop", "resolved")]
    assert eng.firing() == []


def test_failing_source_is_reported_and_other_rules_still_run():
    rules = parse_rules({"rules": [
        {"name": "a", "detector": "gpu_errors", "series": {"gpu_up": "x"}},
        {"name": "b", "detector": "gpu_errors", "series": {"gpu_up": "y"}},
    ]})
    eng = Engine(rules)

    def fetch(rule, now):
        if rule.name == "a":
            raise RuntimeError("connection refused")
        return Window(series={"gpu_up": [Series({"hostname": "h", "gpu": "1"}, [(1.0, 0.0)])]})

    out = eng.evaluate(fetch, now=10.0)
    assert [f.kind for f in out] == ["gpu_lost"]
    assert "connection refused" in eng.errors["a"]


def test_memory_is_bounded():
    eng = Engine([], max_tracked=10)
    fs = [Finding(kind="k", severity="info", summary="s", suggested_action="notify",
                  episode=str(i), rule="r") for i in range(50)]
    eng.update(fs, {"r"})
    assert len(eng.firing()) == 10


def test_key_is_stable_and_distinguishes_episodes():
    a = Finding(kind="loss_spike", severity="warning", summary="x", suggested_action="notify",
                job="j", episode="100", rule="r")
    b = Finding(kind="loss_spike", severity="critical", summary="y", suggested_action="notify",
                job="j", episode="100", rule="r")
    c = Finding(kind="loss_spike", severity="warning", summary="x", suggested_action="notify",
                job="j", episode="900", rule="r")
    assert a.key == b.key != c.key
