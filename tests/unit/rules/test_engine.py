import dataclasses

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


def test_a_rule_bound_to_jobs_resolves_only_the_findings_of_the_job_that_ran():
    (spike,) = parse_rules({"rules": [{"name": "spike", "detector": "gpu_errors",
                                       "series": {"gpu_up": "x"}}]})
    runs = [dataclasses.replace(spike, job=j) for j in ("a", "b")]
    eng = Engine(runs, fetch_threads=1)
    down = {"a", "b"}

    def fetch(rule, now):
        if rule.job == "b" and "b-broken" in down:
            raise RuntimeError("agent of b is gone")
        gone = [Series({"hostname": "h", "gpu": "1"}, [(1.0, 0.0)])] if rule.job in down else []
        return Window(job=rule.job, series={"gpu_up": gone})

    assert sorted(f.job for f in eng.evaluate(fetch, now=1.0)) == ["a", "b"]
    down = {"b-broken"}  # a recovered; b's source fails: b's finding must stay firing
    out = eng.evaluate(fetch, now=2.0)
    assert [(f.job, f.state) for f in out] == [("a", "resolved")]
    assert [f.job for f in eng.firing()] == ["b"]
    assert list(eng.errors) == ["spike[b]"]


def test_rule_source_is_the_one_answer_to_which_rules_run_where():
    rules = {r.name: r for r in parse_rules({"rules": [
        {"name": "spike", "detector": "loss_spike"},
        {"name": "stall", "detector": "job_stalled", "series": {"step_duration": "x",
                                                          "seconds_since_last_report": "y"}},
        {"name": "xid", "detector": "gpu_errors", "series": {"gpu_up": "x"}},
        {"name": "diag", "detector": "diagnosis"},
    ]})}
    online = {n: r.source(online=True) for n, r in rules.items()}
    offline = {n: r.source(online=False) for n, r in rules.items()}
    assert online == {"spike": "steps", "stall": "series", "xid": "series", "diag": "findings"}
    # A file has no series: job_stalled falls back to the steps, gpu_errors cannot run.
    assert offline == {"spike": "steps", "stall": "steps", "xid": None, "diag": "findings"}
