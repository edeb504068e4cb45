"""Throughput findings keep their identity across the engine's cycles (shipped rules).

Each cycle sees only the rule's window (10 minutes at 5 s, as the Prometheus range query
would return it); a drop longer than the window must stay one finding with one key
from its first emission to its resolution, and a second drop is a second finding.
"""

from __future__ import annotations

import random

from sentinel.rules.engine import Engine
from sentinel.rules.finding import Finding
from sentinel.rules.rulefile import load_rules
from sentinel.rules.window import Series, Window

STEP = 5.0
T0 = 100_000.0


def level(t: float, drops: list[tuple[float, float, float]]) -> float:
    """Return the healthy level (1000 tokens/s) or a drop's level at time ``t``."""
    for start, end, value in drops:
        if start <= t < end:
            return value
    return 1000.0


def run_cycles(drops: list[tuple[float, float, float]], end: float, *, jitter: float = 0.03,
               seed: int = 0, every: float = 15.0, with_disk: bool = False
               ) -> tuple[list[Finding], Engine]:
    """Run the shipped throughput and diagnosis rules every ``every`` s up to ``end``."""
    rules = [r for r in load_rules() if r.name in ("throughput", "diagnosis")]
    rng = random.Random(seed)
    grid = [T0 + i * STEP for i in range(int((end - T0) / STEP) + 1)]
    values = {t: level(t, drops) * (1 + rng.uniform(-jitter, jitter)) for t in grid}

    def fetch(rule, now: float) -> Window:
        pts = [(t, values[t]) for t in grid if now - rule.window_s <= t <= now]
        return Window(job="j", series={"tokens_per_sec_cluster": [Series({}, pts)]},
                      step_s=rule.step_s, range_s=rule.window_s, now=now)

    eng = Engine(rules, fetch_threads=1)
    changes: list[Finding] = []
    now = T0 + 600.0
    while now <= end:
        changes += eng.evaluate(fetch, now=now)
        now += every
    return changes, eng


def drop_changes(changes: list[Finding]) -> list[tuple[str, str]]:
    return [(f.key, f.state) for f in changes if f.kind == "throughput_drop"]


def test_a_drop_longer_than_the_window_keeps_one_key_until_it_ends():
    start, stop = T0 + 1500.0, T0 + 1500.0 + 1800.0  # 30 minutes: three windows long
    changes, eng = run_cycles([(start, stop, 600.0)], end=stop + 900.0)
    got = drop_changes(changes)
    assert len(got) == 2, got  # one firing, one resolved: no new key per cycle
    (k1, s1), (k2, s2) = got
    assert (s1, s2) == ("firing", "resolved") and k1 == k2
    fired = next(f for f in changes if f.kind == "throughput_drop")
    assert abs(fired.time_start - start) <= 2 * STEP
    assert fired.detected_at is not None and fired.detected_at - start <= 60.0
    resolved = [f for f in changes if f.kind == "throughput_drop" and f.state == "resolved"][0]
    # Resolved by the rule itself once the samples are back, not only by its absence.
    assert resolved.time_end is not None and abs(resolved.time_end - stop) <= 60.0
    diag = [(f.key, f.state) for f in changes if f.kind == "diagnosis"]
    assert [s for _, s in diag] == ["firing", "resolved"] and diag[0][0] == diag[1][0]
    assert eng.firing() == []


def test_a_second_drop_after_recovery_is_a_new_finding():
    a = (T0 + 1500.0, T0 + 2400.0, 500.0)
    b = (T0 + 2700.0, T0 + 3600.0, 650.0)
    changes, _ = run_cycles([a, b], end=T0 + 4500.0)
    got = drop_changes(changes)
    keys = list(dict.fromkeys(k for k, _ in got))
    assert len(keys) == 2, got
    assert [s for k, s in got if k == keys[0]] == ["firing", "resolved"]
    assert [s for k, s in got if k == keys[1]] == ["firing", "resolved"]


def test_a_run_back_near_the_line_with_jitter_ends_the_drop():
    """After the drop the run comes back to 90% of its old level +-15%: half its samples
    are under the line, which must not hold the drop open for ever (the issue's merge)."""
    start, stop = T0 + 1500.0, T0 + 2100.0
    rng = random.Random(7)
    after = [(stop + i * STEP, stop + (i + 1) * STEP, 900.0 * (1 + rng.uniform(-0.15, 0.15)))
             for i in range(180)]
    changes, _ = run_cycles([(start, stop, 500.0), *after], end=stop + 900.0)
    got = drop_changes(changes)
    first = got[0][0]
    assert [s for k, s in got if k == first] == ["firing", "resolved"], got
    resolved = [f for f in changes if f.key == first and f.state == "resolved"][0]
    assert resolved.time_end is not None and resolved.time_end - stop <= 120.0


def test_a_long_straggler_keeps_one_key():
    """node2 runs 30% under its peers for 25 minutes: one node finding from start to end."""
    rules = [r for r in load_rules() if r.name == "throughput"]
    rng = random.Random(1)
    start, stop, end = T0 + 900.0, T0 + 2400.0, T0 + 3000.0
    grid = [T0 + i * STEP for i in range(int((end - T0) / STEP) + 1)]
    vals = {(n, t): 1000.0 * (0.7 if n == 2 and start <= t < stop else 1.0)
            * (1 + rng.uniform(-0.03, 0.03)) for n in range(4) for t in grid}

    def fetch(rule, now: float) -> Window:
        ts = [t for t in grid if now - rule.window_s <= t <= now]
        return Window(job="j", step_s=rule.step_s, now=now, series={"tokens_per_sec": [
            Series({"hostname": f"n{n}"}, [(t, vals[n, t]) for t in ts]) for n in range(4)]})

    eng = Engine(rules, fetch_threads=1)
    changes: list[Finding] = []
    now = T0 + 600.0
    while now <= end:
        changes += eng.evaluate(fetch, now=now)
        now += 15.0
    got = [(f.key, f.state, f.node) for f in changes if f.kind == "throughput_drop"]
    assert [(s, n) for _, s, n in got] == [("firing", "n2"), ("resolved", "n2")], got
    assert got[0][0] == got[1][0]
