"""The loop: finding -> incident -> decision -> journaled action -> verify, and what follows."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from sentinel.controller.actions import ACTIONS
from sentinel.controller.config import PolicyConfig
from sentinel.rules.finding import Finding
from tests.support.controller import (
    TOY_STEPS,
    FixedWorld,
    RecordingTeller,
    ScriptedDetector,
    ToyAction,
    make_controller,
)


@pytest.fixture
def toy(monkeypatch):
    action = ToyAction()
    monkeypatch.setitem(ACTIONS, "rollback_skip", action)
    return action


def spike(cls="plateau", start=120, job="gpt"):
    return Finding(kind="loss_spike", severity="critical", summary=f"spike {cls} at {start}",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job=job, step_start=start, step_end=start + 2, episode=str(start),
                   evidence={"classification": cls})


def wait_done(ctl):
    assert ctl.executor.wait_idle(timeout=30)


def test_act_runs_every_step_once_and_verifies(tmp_path, toy):
    teller = RecordingTeller()
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, teller=teller)
    stats = ctl.cycle()
    wait_done(ctl)
    assert stats.findings == 1 and stats.started == 1
    lines = (tmp_path / "world").read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == list(TOY_STEPS)
    [inc] = ctl.journal.incidents()
    assert inc.state == "recovered" and inc.recovered_at is not None
    [a] = ctl.journal.actions(incident_id=inc.id)
    assert a.state == "verified" and a.mode == "act"
    assert [s.state for s in ctl.journal.steps(a.id)] == ["done"] * 3
    assert ("progress", f"{a.id} verified") in teller.lines


def test_observe_mode_plans_and_does_nothing(tmp_path, toy):
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, policy=PolicyConfig(rollback_skip_mode="observe"))
    ctl.cycle()
    wait_done(ctl)
    assert not (tmp_path / "world").exists()
    [a] = ctl.journal.actions()
    assert a.state == "observed" and a.plan["world"].endswith("world")


def test_ask_mode_waits_for_approval_then_acts(tmp_path, toy):
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, policy=PolicyConfig(rollback_skip_mode="ask"))
    ctl.cycle()
    [a] = ctl.journal.actions()
    assert a.state == "awaiting_approval"
    ctl.cycle()
    assert not (tmp_path / "world").exists()
    ctl.journal.approve(a.id, "alice")
    ctl.cycle()
    wait_done(ctl)
    assert ctl.journal.action(a.id).state == "verified"
    assert len((tmp_path / "world").read_text().splitlines()) == 3


def test_ask_mode_expires(tmp_path, toy):
    now = [1000.0]
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, policy=PolicyConfig(rollback_skip_mode="ask"),
                          clock=lambda: now[0])
    ctl.cycle()
    now[0] += ctl.config.approval_timeout_seconds + 1
    ctl.cycle()
    [a] = ctl.journal.actions()
    assert a.state == "aborted" and "not approved" in a.error


def test_failed_verification_widens_then_escalates(tmp_path, monkeypatch):
    monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction(fail_verify=True))
    teller = RecordingTeller()
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, teller=teller,
                          policy=PolicyConfig(max_attempts=2, cooldown_job_seconds=0))
    ctl.cycle()
    wait_done(ctl)
    ctl.cycle()  # sees the failure: second attempt, wider
    wait_done(ctl)
    ctl.cycle()  # second failure: a person
    acts = ctl.journal.actions()
    assert [a.attempt for a in acts] == [1, 2]
    assert acts[1].plan["attempt"] == 2
    decisions = ctl.journal.decisions()
    assert decisions[1]["params"]["widen"] == ctl.policy.widen_factor
    assert decisions[-1]["refusal"] == "budget_exhausted" and decisions[-1]["escalate"]
    [inc] = ctl.journal.incidents()
    assert inc.state == "escalated"
    assert ("closed", f"{inc.id} escalated") in teller.lines
    ctl.cycle()  # nothing more happens
    assert len(ctl.journal.actions()) == 2


def test_a_refinding_after_restart_is_not_acted_on_twice(tmp_path, toy):
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det)
    ctl.cycle()
    wait_done(ctl)
    ctl.journal.close()
    # A new controller (a restart): its rules engine reports the same finding as new.
    det2 = ScriptedDetector([[spike()]])
    ctl2 = make_controller(tmp_path, det2)
    ctl2.cycle()
    wait_done(ctl2)
    assert len(ctl2.journal.actions()) == 1
    assert len((tmp_path / "world").read_text().splitlines()) == 3
    # A new classification of it is a change and is decided again (here: nothing to do).
    det2.push(spike("recoverable_fast"))
    ctl2.cycle()
    assert len(ctl2.journal.decisions()) == 2


def test_hardware_findings_of_one_node_are_one_incident(tmp_path, monkeypatch):
    monkeypatch.setitem(ACTIONS, "spare_swap", ToyAction())
    xid = Finding(kind="gpu_xid", severity="critical", summary="XID 79", rule="gpu-errors",
                  suggested_action="spare_swap", node="node3", job="gpt")
    lost = dataclasses.replace(xid, kind="gpu_lost", summary="GPU lost")
    det = ScriptedDetector([[xid], [lost]])
    ctl = make_controller(tmp_path, det, world=FixedWorld(ready_spares=2))
    ctl.cycle()
    ctl.cycle()
    [inc] = ctl.journal.incidents()
    assert inc.group == "node/node3" and inc.summary == "GPU lost"
    # Observe mode (the default for swaps): planned and told, twice, never acted.
    assert [a.state for a in ctl.journal.actions()] == ["observed", "observed"]


def test_breaker_trips_and_pauses_then_resumes(tmp_path, monkeypatch, toy):
    teller = RecordingTeller()
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, teller=teller)
    ctl.journal.trip_breaker("test")
    ctl.cycle()
    [d] = ctl.journal.decisions()
    assert d["refusal"] == "breaker_open"
    assert not (tmp_path / "world").exists()
    # An action resumed while the breaker is open pauses before its first step.
    inc = ctl.journal.incidents()[0]
    rec = ctl.journal.add_action(inc.id, "rollback_skip", "act", "intent",
                                 plan={"world": str(tmp_path / "world"), "job": "gpt",
                                       "attempt": 1}, node=None, job="gpt")
    ctl.executor.execute(rec.id)
    assert ctl.journal.action(rec.id).state == "started"
    assert not (tmp_path / "world").exists()
    ctl.journal.reset_breaker("alice")
    ctl.cycle()  # the loop resumes it
    wait_done(ctl)
    assert ctl.journal.action(rec.id).state == "verified"


def test_resolved_finding_without_action_closes_the_incident(tmp_path):
    f = Finding(kind="throughput_drop", severity="warning", summary="storage stall",
                suggested_action="notify", job="gpt", rule="throughput")
    det = ScriptedDetector([[f], [dataclasses.replace(f, state="resolved")]])
    ctl = make_controller(tmp_path, det)
    ctl.cycle()
    assert ctl.journal.incidents()[0].state == "open"
    ctl.cycle()
    assert ctl.journal.incidents()[0].state == "resolved"


def test_one_drop_seen_by_the_cluster_series_and_the_jobs_steps_is_one_incident(tmp_path):
    steps = Finding(kind="throughput_drop", severity="warning", summary="job 74% below",
                    suggested_action="notify", job="gpt", rule="throughput-steps")
    series = dataclasses.replace(steps, job=None, rule="throughput", summary="cluster 74%")
    other = dataclasses.replace(steps, job="bert", summary="bert 50% below")
    det = ScriptedDetector([[steps], [series], [other]])
    ctl = make_controller(tmp_path, det)
    ctl.cycle()
    ctl.cycle()
    [inc] = ctl.journal.incidents()
    assert inc.group == "throughput/gpt" and inc.summary == "cluster 74%"
    ctl.cycle()  # another job's drop is its own problem
    assert sorted(i.group for i in ctl.journal.incidents()) == [
        "throughput/bert", "throughput/gpt"]


def test_a_failing_detector_does_not_stop_the_loop(tmp_path):
    class Broken:
        def cycle(self, now=None):
            raise RuntimeError("Prometheus is down")

    ctl = make_controller(tmp_path, Broken())
    stats = ctl.cycle()
    assert stats.errors == ["rules: Prometheus is down"] and not ctl.last_cycle_ok


def test_an_action_resumed_for_its_verification_reads_its_steps_outcomes(tmp_path, monkeypatch):
    """Killed after its steps and before its verdict: verify still sees what they did."""
    seen = []

    class Verifying(ToyAction):
        def verify(self, run):
            seen.append(dict(run.outputs))
            return {"summary": "ok"}

    monkeypatch.setitem(ACTIONS, "rollback_skip", Verifying())
    ctl = make_controller(tmp_path, ScriptedDetector([[spike()]]))
    ctl.cycle()
    wait_done(ctl)
    [a] = ctl.journal.actions()
    ctl.journal.set_action(a.id, "done")  # as a controller killed at verify/before leaves it
    ctl.resume()
    wait_done(ctl)
    assert seen[1] == seen[0] == {s: {"did": s} for s in TOY_STEPS}
    assert ctl.journal.action(a.id).state == "verified"


def test_stopping_the_controller_wakes_a_waiting_action(tmp_path):
    """An action sleeping until its deadline (a verification) wakes when the daemon stops."""
    import time

    from sentinel.controller.daemon import build

    parts = build({"controller": {"journal": str(tmp_path / "c.db"), "scheduler": "none",
                                  "listen_address": ""}})
    woke = []
    t = threading.Thread(target=lambda: woke.append(parts.controller.ctx.sleep(300)))
    t.start()
    t0 = time.monotonic()
    parts.controller.stop()
    t.join(10)
    assert woke == [True] and time.monotonic() - t0 < 5


def test_a_tick_handles_findings_and_leaves_rechecks_to_the_cycle(tmp_path, toy):
    det = ScriptedDetector([[spike()]])
    ctl = make_controller(tmp_path, det, policy=PolicyConfig(rollback_skip_mode="ask"))
    observed = []
    ctl.observers.append(lambda now, stats: observed.append(now))
    stats = ctl.tick()
    [a] = ctl.journal.actions()
    assert stats.findings == 1 and a.state == "awaiting_approval"
    ctl.journal.approve(a.id, "alice")
    ctl.tick()  # approvals are looked at once a cycle, not every tick
    assert ctl.journal.action(a.id).state == "awaiting_approval"
    assert observed == [] and ctl.cycles == 0
    ctl.cycle()
    wait_done(ctl)
    assert ctl.journal.action(a.id).state == "verified" and len(observed) == 1


def test_an_incident_of_several_findings_ends_with_the_last_of_them(tmp_path):
    drop = Finding(kind="throughput_drop", severity="warning", summary="drop",
                   suggested_action="notify", job="gpt", rule="throughput-steps", episode="1")
    storage = Finding(kind="diagnosis", severity="warning", summary="storage stall",
                      suggested_action="notify", job="gpt", rule="diagnosis",
                      episode="storage_stall@1")
    gpu = dataclasses.replace(storage, summary="GPU contention", episode="gpu_contention@2")
    det = ScriptedDetector([[drop, storage], [dataclasses.replace(storage, state="resolved"),
                                              gpu], [dataclasses.replace(drop, state="resolved"),
                                                     dataclasses.replace(gpu, state="resolved")]])
    ctl = make_controller(tmp_path, det)
    ctl.tick()
    ctl.tick()  # the first cause gave way to the next: the incident goes on
    [inc] = ctl.journal.incidents()
    assert inc.state == "open" and inc.summary == "GPU contention"
    ctl.tick()
    [inc] = ctl.journal.incidents()
    assert inc.state == "resolved"
