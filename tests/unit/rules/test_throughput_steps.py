"""The throughput-steps rule: drops found on the agent's step records within seconds."""

from __future__ import annotations

import random

from sentinel.rules.engine import run_rule
from sentinel.rules.rulefile import load_rules
from sentinel.rules.window import StepPoint, Window

T0 = 50_000.0
TOKENS = 8192.0


def steps(duration: float, slow: list[tuple[float, float, float]], *, seed: int = 0,
          jitter: float = 0.15, step_s: float = 0.25, nodes: int = 4, ranks: int = 2,
          long_steps: tuple[tuple[float, float], ...] = ()) -> list[StepPoint]:
    """Return step records of every rank, in time order: ``slow`` = (start, end, factor)
    multiplies the step time; ``long_steps`` = (at, seconds) makes one step that long."""
    rng = random.Random(seed)
    out: list[StepPoint] = []
    t, step = T0, 0
    pending = sorted(long_steps)
    while t < T0 + duration:
        factor = next((f for a, b, f in slow if a <= t < b), 1.0)
        dt = step_s * factor
        if pending and t >= pending[0][0]:
            dt = pending.pop(0)[1]
        t += dt
        step += 1
        for n in range(nodes):
            for r in range(ranks):
                own = t + rng.uniform(-jitter, jitter) * step_s
                out.append(StepPoint(step=step, loss=2.0, time=own, node=f"n{n}",
                                     rank=n * ranks + r, tokens=TOKENS))
    return sorted(out, key=lambda p: p.time or 0.0)


def drops(pts: list[StepPoint]):
    (rule,) = [r for r in load_rules() if r.name == "throughput-steps"]
    return [f for f in run_rule(rule, Window(job="j", steps=pts))
            if f.kind == "throughput_drop"]


def test_a_40_percent_drop_is_flagged_within_10_s_on_the_steps():
    for seed in range(3):
        onset = T0 + 300.0
        found = drops(steps(420.0, [(onset, onset + 60.0, 1 / 0.6)], seed=seed))
        assert len(found) == 1, [f.summary for f in found]
        (f,) = found
        assert f.evidence["scope"] == "job" and abs(f.time_start - onset) <= 2.0
        assert f.evidence["flagged_at"] - onset <= 10.0, f.evidence
        assert f.state == "resolved" and abs(f.time_end - (onset + 60.0)) <= 10.0


def test_no_finding_for_jitter_or_single_step_checkpoint_saves():
    for seed in range(3):
        saves = tuple((T0 + 150.0 + 120.0 * i, 12.0) for i in range(4))
        assert drops(steps(660.0, [], seed=seed, long_steps=saves)) == []


def test_a_slow_node_is_a_straggler_on_the_steps():
    """From t0+300 s node n2's steps take 1.5x as long: its own rate falls a third."""
    pts = steps(420.0, [], seed=4)
    cut = T0 + 300.0
    out = [p if p.node != "n2" or (p.time or 0.0) < cut else
           StepPoint(step=p.step, loss=p.loss, time=cut + ((p.time or 0.0) - cut) * 1.5,
                     node=p.node, rank=p.rank, tokens=p.tokens)
           for p in pts]
    found = [f for f in drops(sorted(out, key=lambda p: p.time or 0.0))
             if f.evidence["scope"] == "node"]
    assert [f.node for f in found] == ["n2"], [f.summary for f in found]
    assert found[0].evidence["flagged_at"] - cut <= 10.0


def test_a_drop_longer_than_the_step_cache_keeps_one_key_through_cycles():
    """The agent's stream keeps the newest records only (here 3 minutes of them): a
    10-minute drop, evaluated every 15 s by the engine, stays one finding, one key."""
    from collections import deque

    from sentinel.rules.engine import Engine

    onset, end = T0 + 300.0, T0 + 900.0
    pts = steps(1200.0, [(onset, end, 1 / 0.6)], seed=2, nodes=3, ranks=1)
    rules = [r for r in load_rules() if r.name == "throughput-steps"]
    eng = Engine(rules, fetch_threads=1)
    cache: deque[StepPoint] = deque(maxlen=3 * 4 * 180)  # ~180 s of 3 nodes x 4 steps/s
    fed = 0
    changes = []
    now = T0 + 200.0
    while now <= T0 + 1200.0:
        while fed < len(pts) and (pts[fed].time or 0.0) <= now:
            cache.append(pts[fed])
            fed += 1
        changes += eng.evaluate(lambda rule, n: Window(job="j", steps=list(cache), now=n),
                                now=now)
        now += 15.0
    got = [(f.key, f.state) for f in changes if f.kind == "throughput_drop"]
    assert [s for _, s in got] == ["firing", "resolved"], got
    assert got[0][0] == got[1][0]
    gone = [f for f in changes if f.kind == "throughput_drop" and f.state == "resolved"][0]
    assert abs(gone.time_start - onset) <= 2.0 and abs(gone.time_end - end) <= 15.0
