"""Goodput: every second of a job is productive or charged to one cause, incident and action."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sentinel.controller.actions import ACTIONS
from sentinel.controller.goodput import (
    Context,
    GoodputAccountant,
    GoodputState,
    Span,
    advance,
    incident_times,
    infer_period,
)
from sentinel.controller.journal import Journal
from sentinel.controller.model import Incident
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint
from tests.support.controller import ScriptedDetector, ToyAction, make_controller

REAL = Path(__file__).resolve().parents[3] / "bench" / "detectors" / "curves" / "real"
T0 = 1_000_000.0


def steady(n, *, start_step=0, t=T0, dt=1.0, pause=None, rank=0):
    """Steps at ``dt`` apart; ``pause`` maps a step to extra seconds before it."""
    out = []
    for s in range(start_step, start_step + n):
        t += dt + (pause or {}).get(s, 0.0)
        out.append(StepPoint(step=s, loss=2.0, time=t, rank=rank))
    return out


def balanced(st: GoodputState) -> float:
    """Return wall - (productive + badput + pending): zero when every second is accounted."""
    return st.wall - (st.productive + sum(st.badput.values()) + st.pending_seconds)


def real(name):
    return [StepPoint(step=r["step"], loss=1.0, time=r["time"], node=r["node"])
            for r in map(json.loads, (REAL / f"{name}.jsonl").read_text().splitlines())]


# -- constructed streams ---------------------------------------------------------------

def test_checkpoint_pauses_and_a_stall_are_told_apart():
    pauses = {s: 5.0 for s in range(20, 200, 20)} | {73: 30.0}
    st = GoodputState(job="gpt")
    charges = advance(st, steady(200, pause=pauses), Context())
    assert st.period == (20, 0)
    assert st.badput["checkpoint"] == pytest.approx(5.0 * 9)
    assert st.badput["stall"] == pytest.approx(30.0)
    assert st.productive == pytest.approx(199.0)
    assert st.ratio == pytest.approx(199.0 / (199 + 45 + 30))
    assert balanced(st) == pytest.approx(0.0, abs=1e-6)
    stall = next(c for c in charges if c.cause == "stall")
    assert "before step 73" in stall.note and stall.incident_id is None


def test_a_lone_pause_waits_then_is_a_stall_charged_to_the_stalled_incident():
    st = GoodputState(job="gpt")
    pts = steady(330, dt=60.0, pause={60: 1200.0})  # 1-minute steps, 20 minutes without one
    t_gap = pts[59].time
    ctx = Context(stalls=[Span(start=t_gap + 5, end=None, cause="stall", incident_id="i-stall",
                               action_id=None)])
    advance(st, pts[:100], ctx)
    # It might be the first of a series of checkpoint saves: it waits for the period.
    assert st.pending_seconds == pytest.approx(1200.0)
    assert st.badput["stall"] == 0.0 and balanced(st) == pytest.approx(0.0, abs=1e-6)
    # No period after PENDING_MAX_SECONDS: a stall, charged to the incident open over it.
    [c] = [c for c in advance(st, pts, ctx) if c.cause == "stall"]
    assert c.incident_id == "i-stall" and not st.pending
    assert c.seconds == pytest.approx(1200.0)


def test_rollback_charges_rerun_steps_and_restore_to_the_action():
    st = GoodputState(job="gpt")
    first = steady(151)  # steps 0..150, 1 s each
    advance(st, first, Context())
    t_req = first[-1].time - 0.5
    # The job restores for 8 s and runs step 120 again (its checkpoint).
    again = steady(50, start_step=120, t=first[-1].time + 7.0)
    ctx = Context(actions=[Span(start=t_req, end=None, cause="rollback", incident_id="i-1",
                                action_id="a-1")])
    charges = advance(st, again, ctx)
    [c] = charges
    assert (c.cause, c.incident_id, c.action_id) == ("rollback", "i-1", "a-1")
    # Steps 120..150 (31 steps at 1 s) lost, and 8 s - one step of restore.
    assert c.seconds == pytest.approx(31.0 + 7.0)
    assert "steps 120-150 run again" in c.note
    assert st.last_step == 169 and balanced(st) == pytest.approx(0.0, abs=1e-6)
    assert st.productive == pytest.approx(150 - 31 + 1 + 49)


def test_a_rewind_without_an_action_is_a_restart_and_old_steps_are_estimated():
    st = GoodputState(job="gpt")
    first = steady(5000)
    advance(st, first, Context())
    # Back 4,500 steps: further than the timeline keeps; the rest at the baseline.
    again = steady(3, start_step=500, t=first[-1].time + 60.0)
    [c] = advance(st, again, Context())
    assert c.cause == "restart" and "partly estimated" in c.note
    assert c.seconds == pytest.approx(4500.0 + 60.0, rel=1e-6)
    assert balanced(st) == pytest.approx(0.0, abs=1e-6)


def test_requeue_gap_during_a_spare_swap():
    st = GoodputState(job="gpt")
    first = steady(100)
    advance(st, first, Context())
    # Requeued onto a spare: 300 s in the queue and starting, resumed at the next step.
    later = steady(10, start_step=100, t=first[-1].time + 300.0)
    ctx = Context(actions=[Span(start=first[-1].time + 1, end=first[-1].time + 200,
                                cause="requeue", incident_id="i-9", action_id="a-9")])
    [c] = advance(st, later, ctx)
    assert (c.cause, c.action_id) == ("requeue", "a-9")
    assert c.seconds == pytest.approx(300.0)


def test_throughput_drop_is_charged_against_the_pre_drop_baseline_even_if_seen_late():
    st = GoodputState(job="gpt")
    before = steady(200)  # 1 s/step
    slow = steady(100, start_step=200, t=before[-1].time, dt=1.5)
    after = steady(100, start_step=300, t=slow[-1].time)
    # The slow steps are accounted before the incident exists (it opens later).
    advance(st, before + slow, Context())
    assert st.badput["throughput_drop"] == 0.0
    drop = Span(start=before[-1].time, end=slow[-1].time, cause="throughput_drop",
                incident_id="i-drop", action_id="a-swap")
    charges = advance(st, after, Context(drops=[drop]))
    [c] = [c for c in charges if c.cause == "throughput_drop"]
    assert c.seconds == pytest.approx(100 * 0.5)
    assert (c.incident_id, c.action_id) == ("i-drop", "a-swap")
    assert balanced(st) == pytest.approx(0.0, abs=1e-6)
    # Charged once: the incident seen again adds nothing.
    more = steady(10, start_step=400, t=after[-1].time)
    assert not [c for c in advance(st, more, Context(drops=[drop]))
                if c.cause == "throughput_drop"]


def test_only_one_rank_is_counted_and_old_or_repeated_records_are_ignored():
    st = GoodputState(job="gpt")
    r0, r1 = steady(50, rank=0), steady(50, rank=1, dt=1.1)
    advance(st, r1 + r0 + r0[10:12], Context())
    assert st.rank == 0 and st.wall == pytest.approx(49.0)
    assert advance(st, r0, Context()) == [] and st.wall == pytest.approx(49.0)
    assert st.productive == pytest.approx(49.0)


def test_incremental_and_saved_state_give_the_same_accounting_as_one_pass():
    pts = real("resumed")
    whole = GoodputState(job="j")
    advance(whole, pts, Context())
    rng = random.Random(7)
    st = GoodputState(job="j")
    i = 0
    while i < len(pts):
        n = rng.randint(1, 120)
        advance(st, pts[: i + n], Context())  # the stream's whole ring, as the loop sees it
        st = GoodputState.from_json(json.loads(json.dumps(st.to_json())))  # a restart
        i += n
    assert st.productive == pytest.approx(whole.productive)
    for cause, v in whole.badput.items():
        assert st.badput[cause] == pytest.approx(v, abs=1e-6), cause


def test_period_needs_three_pauses_in_a_row():
    assert infer_period([50, 100]) is None
    assert infer_period([50, 100, 150, 200]) == (50, 0)
    assert infer_period([16, 17, 18]) is None  # a slow patch, not checkpoints
    assert infer_period([73, 130, 230, 330]) == (100, 30)
    # A lone pause waits, then is a stall once the period is known and it is off it.
    st = GoodputState(job="j")
    advance(st, steady(60, pause={37: 9.0}), Context())
    assert st.pending and st.badput["stall"] == 0.0
    advance(st, steady(150, start_step=60, t=st.last_time,
                       pause={s: 4.0 for s in (60, 80, 100)}), Context())
    assert st.period == (20, 0) and not st.pending
    assert st.badput["stall"] == pytest.approx(9.0)
    assert st.badput["checkpoint"] == pytest.approx(12.0)


# -- real recorded H100 runs -----------------------------------------------------------

@pytest.mark.parametrize("name", ["healthy", "bad_batch", "high_lr", "resumed"])
def test_real_runs_checkpoint_every_50_steps(name):
    st = GoodputState(job=name)
    advance(st, real(name), Context())
    assert st.period == (50, 0)  # examples/train_gpt.py --checkpoint-every 50 (and eval)
    assert balanced(st) == pytest.approx(0.0, abs=1e-6)
    # 12-14 ms steps against ~0.15 s saves+evals every 50 steps: about a fifth is lost.
    running = st.wall - st.badput["restart"]  # the resumed run was stopped for ~12 s
    assert 0.12 < st.badput["checkpoint"] / running < 0.3
    assert st.badput["stall"] < 0.03 * running
    assert not st.pending


def test_real_resumed_run_charges_the_restart():
    st = GoodputState(job="resumed")
    [c] = [c for c in advance(st, real("resumed"), Context()) if c.cause == "restart"]
    # Stopped after step 599 and resumed from the checkpoint at 450 about 12 s later.
    assert "steps 450-599 run again (150 steps" in c.note
    gap = 12.056
    assert gap < c.seconds < gap + 150 * 0.03
    assert st.badput["rollback"] == 0.0 and st.badput["requeue"] == 0.0


# -- the loop's side -------------------------------------------------------------------

def spike(t):
    return Finding(kind="loss_spike", severity="critical", summary="spike at 120",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job="gpt", step_start=120, step_end=122, episode="120", time_start=t,
                   evidence={"classification": "plateau"})


def test_the_loop_charges_a_rollback_to_its_incident_and_action(tmp_path, monkeypatch):
    monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction())
    first = steady(151)
    now = [first[-1].time]
    stream: list[StepPoint] = list(first)
    det = ScriptedDetector([[spike(first[120].time)]])
    ctl = make_controller(tmp_path, det, clock=lambda: now[0],
                          steps={"gpt": lambda: list(stream)})
    ctl.cycle()
    assert ctl.executor.wait_idle(30)
    [a] = ctl.journal.actions()
    assert a.state == "verified"
    # The job rolled back after the action started: step 120 again, 6 s later.
    stream += steady(20, start_step=120, t=first[-1].time + 5.0)
    now[0] = stream[-1].time
    stats = ctl.cycle()
    assert not stats.errors
    [row] = [r for r in ctl.journal.badput("gpt") if r["cause"] == "rollback"]
    assert (row["incident_id"], row["action_id"]) == (a.incident_id, a.id)
    assert row["seconds"] == pytest.approx(31.0 + 5.0)
    [summary] = ctl.journal.goodput()
    assert summary["job"] == "gpt" and summary["badput"]["rollback"] == pytest.approx(36.0)
    # A restarted controller resumes from the journal and charges nothing twice.
    ctl.stop()
    ctl.journal.close()
    j = Journal(tmp_path / "controller.db")
    acc = GoodputAccountant(j, lambda: ["gpt"], lambda job: list(stream))
    assert acc.cycle(now[0]) == []
    stream += steady(5, start_step=140, t=stream[-1].time)
    assert acc.cycle(now[0]) == []
    assert len([r for r in j.badput("gpt") if r["cause"] == "rollback"]) == 1
    [summary] = j.goodput()
    assert summary["last"] == stream[-1].time
    assert summary["productive"] + sum(summary["badput"].values()) + summary["pending"] \
        == pytest.approx(summary["last"] - summary["start"])


def test_a_job_without_a_stream_is_skipped_and_bad_data_is_an_error(tmp_path):
    j = Journal(tmp_path / "c.db")

    def steps_of(job):
        if job == "nostream":
            raise KeyError(job)
        return [StepPoint(step=1, loss=1.0, time=T0), "not a step"]

    acc = GoodputAccountant(j, lambda: ["nostream", "broken"], steps_of)
    [err] = acc.cycle(T0)
    assert err.startswith("goodput broken: AttributeError")
    assert j.goodput() == []


def test_incident_times():
    inc = Incident(id="i-1", group="g", kind="loss_spike", job="gpt", node=None,
                   state="recovered", severity="critical", summary="", opened_at=130.0,
                   updated_at=400.0, detected_at=100.0, decided_at=131.5, recovered_at=400.0)
    t = incident_times(inc)
    assert (t.detect, t.decide, t.recover) == (30.0, 1.5, 300.0)
    inc.recovered_at, inc.decided_at, inc.detected_at = None, None, None
    t = incident_times(inc)
    assert (t.detect, t.decide, t.recover) == (0.0, None, None)
