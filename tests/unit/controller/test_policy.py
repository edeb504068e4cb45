"""The policy is a pure function: modes, cooldowns, budgets, breaker, escalation, scope."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.controller.config import PolicyConfig
from sentinel.controller.policy import (
    REFUSALS,
    REFUSE_BREAKER,
    REFUSE_BUDGET,
    REFUSE_COOLDOWN,
    REFUSE_DRAIN_RATE,
    REFUSE_IN_PROGRESS,
    REFUSE_NO_SPARE,
    History,
    PastAction,
    decide,
    incident_group,
)
from sentinel.rules.finding import Finding

NOW = 1_800_000_000.0


def spike(cls: str = "plateau", job: str = "gpt", nonfinite: int = 0, start: int = 120) -> Finding:
    return Finding(kind="loss_spike", severity="critical", summary=f"spike {cls}",
                   suggested_action="rollback_skip", detector="loss_spike", job=job,
                   step_start=start, step_end=start + 2, episode=str(start),
                   evidence={"classification": cls, "nonfinite_steps": nonfinite},
                   state="resolved" if cls.startswith("recoverable") else "firing")


def xid(node: str = "node3") -> Finding:
    return Finding(kind="gpu_xid", severity="critical", summary=f"XID 79 on {node}",
                   suggested_action="spare_swap", detector="gpu_errors", node=node, job="gpt")


def act(action: str, incident: str, t: float, *, node: str | None = None, job: str | None = None,
        state: str = "verified", mode: str = "act", oc: str | None = None) -> PastAction:
    return PastAction(action=action, incident=incident, mode=mode, state=state, time=t,
                      node=node, job=job, outcome_class=oc)


def test_spike_classes_map_to_rollback_or_notify():
    cfg = PolicyConfig()
    h = History(incident="i-1")
    assert decide(spike("plateau"), h, NOW, cfg).action == "rollback_skip"
    assert decide(spike("diverged"), h, NOW, cfg).action == "rollback_skip"
    assert decide(spike("recoverable_slow"), h, NOW, cfg).action == "rollback_skip"
    assert decide(spike("pending", nonfinite=3), h, NOW, cfg).action == "rollback_skip"
    fast = decide(spike("recoverable_fast"), h, NOW, cfg)
    assert fast.action is None and "fewer steps" in fast.reason
    assert decide(spike("pending"), h, NOW, cfg).action is None


def test_modes_come_from_config():
    h = History(incident="i-1", ready_spares=2, node_in_job=True, nodes_total=100)
    assert decide(xid(), h, NOW, PolicyConfig()).mode == "observe"  # default for swaps
    assert decide(spike(), h, NOW, PolicyConfig()).mode == "act"
    cfg = PolicyConfig(spare_swap_mode="ask", rollback_skip_mode="observe")
    assert decide(xid(), h, NOW, cfg).mode == "ask"
    assert decide(spike(), h, NOW, cfg).mode == "observe"


def test_breaker_open_refuses_everything():
    h = History(incident="i-1", breaker_open=True, breaker_reason="too many drains",
                ready_spares=3, node_in_job=True)
    for f in (spike(), xid()):
        d = decide(f, h, NOW, PolicyConfig())
        assert d.refusal == REFUSE_BREAKER and "too many drains" in d.reason


def test_in_progress_action_is_not_doubled():
    h = History(incident="i-1", actions=(act("rollback_skip", "i-1", NOW - 5, state="started"),))
    assert decide(spike(), h, NOW, PolicyConfig()).refusal == REFUSE_IN_PROGRESS


def test_escalation_ladder_for_spikes():
    cfg = PolicyConfig(max_attempts=2, widen_factor=4)
    first = decide(spike(), History(incident="i-1"), NOW, cfg)
    assert first.params["widen"] == 1 and first.params["attempt"] == 1
    one = (act("rollback_skip", "i-1", NOW - 100, state="failed", oc="permanent"),)
    second = decide(spike(), History(incident="i-1", actions=one), NOW, cfg)
    assert second.action == "rollback_skip" and not second.refusal
    assert second.params["widen"] == 4 and "wider skip" in second.reason
    two = one + (act("rollback_skip", "i-1", NOW - 50, state="failed", oc="permanent"),)
    third = decide(spike(), History(incident="i-1", actions=two), NOW, cfg)
    assert third.refusal == REFUSE_BUDGET and third.escalate


def test_transient_failures_retry_then_escalate():
    cfg = PolicyConfig(transient_retries=2)
    t = (act("rollback_skip", "i-1", NOW - 10, state="failed", oc="transient"),)
    d = decide(spike(), History(incident="i-1", actions=t, transient_failures=1), NOW, cfg)
    assert d.action == "rollback_skip" and not d.refusal and d.params["widen"] == 1
    d = decide(spike(), History(incident="i-1", actions=t, transient_failures=3), NOW, cfg)
    assert d.refusal == REFUSE_BUDGET and d.escalate


def test_cooldown_per_job_and_node_but_not_within_the_incident():
    cfg = PolicyConfig(cooldown_job_seconds=600, cooldown_node_seconds=3600)
    other = (act("rollback_skip", "i-0", NOW - 100, job="gpt"),)
    d = decide(spike(job="gpt"), History(incident="i-1", actions=other), NOW, cfg)
    assert d.refusal == REFUSE_COOLDOWN and "cooldown ends in 500 s" in d.reason
    assert not decide(spike(job="other"), History(incident="i-1", actions=other), NOW,
                      cfg).refusal
    old = (act("rollback_skip", "i-0", NOW - 700, job="gpt"),)
    assert not decide(spike(job="gpt"), History(incident="i-1", actions=old), NOW, cfg).refusal
    swap = (act("spare_swap", "i-0", NOW - 100, node="node3"),)
    h = History(incident="i-1", actions=swap, ready_spares=2, node_in_job=True, nodes_total=100)
    assert decide(xid("node3"), h, NOW, cfg).refusal == REFUSE_COOLDOWN
    assert not decide(xid("node4"), h, NOW, cfg).refusal
    observed = (act("spare_swap", "i-0", NOW - 100, node="node3", mode="observe",
                    state="observed"),)
    h = dataclasses.replace(h, actions=observed)
    assert not decide(xid("node3"), h, NOW, cfg).refusal  # observing is not acting


def test_no_ready_spare_refuses_and_escalates():
    h = History(incident="i-1", ready_spares=0, node_in_job=True, nodes_total=10)
    d = decide(xid(), h, NOW, PolicyConfig())
    assert d.refusal == REFUSE_NO_SPARE and d.escalate
    # A node no job runs on needs no spare: it is drained and burned in.
    d = decide(xid(), dataclasses.replace(h, node_in_job=False), NOW, PolicyConfig())
    assert d.action == "spare_swap" and not d.refusal and d.params["swap"] is False


def test_drain_rate_and_breaker():
    cfg = PolicyConfig(max_drains_per_hour=2, breaker_max_nodes=4, breaker_max_fraction=0.5,
                       breaker_window_seconds=7200)
    drains = tuple(act("spare_swap", f"i-{n}", NOW - 60 * n, node=f"n{n}") for n in (1, 2))
    h = History(incident="i-9", actions=drains, ready_spares=5, node_in_job=True, nodes_total=100)
    d = decide(xid("n9"), h, NOW, cfg)
    assert d.refusal == REFUSE_DRAIN_RATE and d.trip_breaker is None
    # Three drains over the last two hours, two of them older than an hour: rate is fine,
    # but a fourth in the breaker window is over breaker_max_nodes... only at 4.
    older = tuple(act("spare_swap", f"i-{n}", NOW - 3700 - n, node=f"n{n}") for n in (1, 2, 3))
    d = decide(xid("n9"), dataclasses.replace(h, actions=older), NOW, cfg)
    assert d.action == "spare_swap" and not d.refusal
    four = older + (act("spare_swap", "i-4", NOW - 4000, node="n4"),)
    d = decide(xid("n9"), dataclasses.replace(h, actions=four), NOW, cfg)
    assert d.refusal == REFUSE_BREAKER and d.trip_breaker and "reset-breaker" in d.trip_breaker
    # The fraction binds on a small cluster: 10% of 10 nodes is 1 drain.
    small = History(incident="i-9", actions=drains[:1], ready_spares=5, node_in_job=True,
                    nodes_total=10)
    d = decide(xid("n9"), small, NOW, PolicyConfig(breaker_max_fraction=0.1))
    assert d.refusal == REFUSE_BREAKER


def test_throttle_on_a_free_node_is_burned_in():
    f = Finding(kind="gpu_throttle", severity="warning", summary="HW slowdown on node7",
                suggested_action="burnin", node="node7")
    assert decide(f, History(incident="i-1", node_in_job=False), NOW,
                  PolicyConfig()).action == "burnin"
    d = decide(f, History(incident="i-1", node_in_job=True, ready_spares=1), NOW, PolicyConfig())
    assert d.action == "spare_swap"


def test_notify_findings_and_resolved_ones_do_nothing():
    f = Finding(kind="throughput_drop", severity="warning", summary="storage stall",
                suggested_action="notify", job="gpt")
    assert decide(f, History(incident="i-1"), NOW, PolicyConfig()).action is None
    gone = dataclasses.replace(xid(), state="resolved")
    assert decide(gone, History(incident="i-1"), NOW, PolicyConfig()).action is None


def test_a_drop_joins_the_open_incident_of_the_same_drop_seen_elsewhere():
    from sentinel.controller.policy import joined_group

    assert joined_group("throughput/cluster", ["throughput/gpt", "storage"]) == "throughput/gpt"
    assert joined_group("throughput/cluster", ["throughput/gpt", "throughput/bert"]) is None
    assert joined_group("throughput/gpt", ["throughput/cluster"]) == "throughput/cluster"
    assert joined_group("throughput/gpt", ["storage", "loss/gpt"]) is None
    assert joined_group("storage", ["throughput/cluster"]) is None


def test_incident_groups():
    assert incident_group(xid("node3")) == "node/node3"
    assert incident_group(spike(start=100)) == incident_group(spike(start=900)) == "loss/gpt"
    drop = Finding(kind="throughput_drop", severity="warning", summary="x",
                   suggested_action="notify", job="gpt")
    storage = Finding(kind="diagnosis", severity="warning", summary="storage stall",
                      suggested_action="notify", job="gpt", evidence={"cause": "storage_stall"})
    assert incident_group(drop) == incident_group(storage) == "throughput/gpt"
    cluster = [dataclasses.replace(f, job=None) for f in (drop, storage)]
    assert {incident_group(f) for f in cluster} == {"throughput/cluster"}
    gpu = Finding(kind="diagnosis", severity="warning", summary="failing GPU 3 on node3",
                  suggested_action="spare_swap", job="gpt", node="node3")
    assert incident_group(gpu) == "node/node3"
    disks = [Finding(kind="disk_latency", severity="warning", summary="slow reads",
                     suggested_action="notify", node=n, evidence={"device": "nvme0n1"})
             for n in ("node1", "node2")]
    assert {incident_group(d) for d in disks} == {"storage"}
    other = Finding(kind="job_stalled", severity="critical", summary="no step", job="gpt",
                    suggested_action="notify")
    assert incident_group(other) == f"finding/{other.key}"


# -- properties ---------------------------------------------------------------------

ACTIONS = st.sampled_from(["rollback_skip", "spare_swap", "burnin"])
STATES = st.sampled_from(["intent", "started", "done", "verified", "failed", "aborted",
                          "observed", "awaiting_approval"])
past = st.builds(
    PastAction, action=ACTIONS, incident=st.sampled_from(["i-1", "i-2", "i-3"]),
    mode=st.sampled_from(["observe", "ask", "act"]), state=STATES,
    time=st.floats(NOW - 20000, NOW), node=st.sampled_from([None, "node3", "node4"]),
    job=st.sampled_from([None, "gpt", "other"]),
    outcome_class=st.sampled_from([None, "transient", "permanent"]))
histories = st.builds(
    History, incident=st.just("i-1"), actions=st.lists(past, max_size=12).map(tuple),
    breaker_open=st.booleans(), nodes_total=st.integers(0, 2000),
    ready_spares=st.integers(-1, 5), node_in_job=st.booleans(),
    transient_failures=st.integers(0, 5))
findings = st.one_of(
    st.builds(spike, st.sampled_from(["pending", "recoverable_fast", "recoverable_slow",
                                      "plateau", "diverged"]), st.just("gpt"),
              st.integers(0, 2)),
    st.builds(xid, st.sampled_from(["node3", "node4", "node9"])))


@settings(max_examples=300, deadline=None)
@given(findings, histories)
def test_properties(f, h):
    cfg = PolicyConfig(spare_swap_mode="act")
    d = decide(f, h, NOW, cfg)
    assert d == decide(f, h, NOW, cfg)  # pure
    assert d.refusal is None or d.refusal in REFUSALS
    acting = d.action is not None and d.refusal is None
    if h.breaker_open:
        assert not acting  # nothing runs while the breaker is open
    if acting:
        # Never two unfinished actions of a kind for one incident.
        assert not any(a.incident == "i-1" and a.action == d.action
                       and a.state in ("intent", "started", "done", "awaiting_approval")
                       for a in h.actions)
        counted = [a for a in h.actions if a.incident == "i-1" and a.action == d.action
                   and a.counts()]
        assert len(counted) < cfg.max_attempts  # the budget holds
        if d.action == "spare_swap" and h.node_in_job:
            assert h.ready_spares != 0  # never a drain without a ready spare
    if d.trip_breaker:
        assert d.refusal == REFUSE_BREAKER
