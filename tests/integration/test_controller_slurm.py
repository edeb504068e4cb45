"""The controller's Slurm actions end to end on a real local Slurm (munged, slurmctld, 5 slurmd).

node1-4 are the explicit-node reservation ``train`` running the requeueable job
``gpt-7b``; node5 is the staged spare. The burn-in command is a REPLAY of a burn-in
recorded on an H200 (sentinel.burnin.replay: the test nodes have no GPU), run
through ``srun`` inside the maintenance reservation as a real burn-in would be.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sentinel.controller.spares import SparePool
from sentinel.rules.finding import Finding
from tests.support.controller import ScriptedDetector
from tests.support.slurm import SlurmCluster, run_slurm
from tests.support.slurm_driver import config, make, run_until_done, writes

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

JOB_SCRIPT = """#!/bin/bash
echo "start $(date +%s.%N) restarts=${SLURM_RESTART_COUNT:-0} nodes=$SLURM_JOB_NODELIST"
exec sleep 3600
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    with run_slurm(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture
def slurm(cluster) -> SlurmCluster:
    cluster.reset()
    return cluster


def start_job(c: SlurmCluster, out: Path) -> str:
    """Reserve node1-4 as ``train`` and run the requeueable job gpt-7b there."""
    c.run("scontrol", "create", "reservation", "ReservationName=train", "Nodes=node[1-4]",
          "StartTime=now", "Duration=infinite", "Users=root")
    job = c.sbatch("--requeue", "--open-mode=append", "-N4", "--reservation=train",
                   "-J", "gpt-7b", "-o", str(out), script=JOB_SCRIPT)
    c.wait_job_running(job)
    return job


def xid(node: str, t: float | None = None) -> Finding:
    """A hardware finding as the gpu_errors detector writes it."""
    return Finding(kind="gpu_xid", severity="critical", suggested_action="spare_swap",
                   summary=f"XID 79 (fallen off the bus) on {node} GPU 3: 1 new",
                   detector="gpu_errors", rule="gpu-errors", job="gpt-7b", node=node, gpu="3",
                   confidence=0.95, evidence={"xid": 79, "class": "fallen off the bus",
                                              "count": 1.0},
                   episode="79", time_start=t or time.time())


def admit_spare(node: str) -> Finding:
    """What an operator's request to burn in a newly staged spare looks like to the policy."""
    return Finding(kind="spare_admission", severity="info", suggested_action="burnin",
                   summary=f"{node} staged: burn it in before it joins the spare pool",
                   detector="operator", node=node)


def controller(tmp: Path, c: SlurmCluster, *batches: list[Finding], verdict: str = "pass",
               policy: dict | None = None, **settings):
    det = ScriptedDetector(list(batches))
    parts = make(config(tmp, verdict=verdict, policy=policy, **settings), tmp / "writes.jsonl",
                 det, conf=str(c.conf))
    return parts, det


def scontrol_writes(tmp: Path) -> list[str]:
    return [" ".join(a[1:]) for a in writes(tmp / "writes.jsonl") if a[0] == "scontrol"]


def burn_in_spare(tmp: Path, c: SlurmCluster, node: str = "node5") -> None:
    """Burn the spare in through the controller: the burnin action journals its pass."""
    parts, _ = controller(tmp, c, [admit_spare(node)])
    try:
        run_until_done(parts)
        [a] = [a for a in parts.journal.actions() if a.node == node]
        assert (a.action, a.state) == ("burnin", "verified"), a.error
    finally:
        parts.controller.stop()
        parts.journal.close()


def test_spare_swap_end_to_end_passing_burnin(slurm, tmp_path):
    job = start_job(slurm, tmp_path / "job.out")
    parts, det = controller(tmp_path, slurm)
    pool = SparePool(parts.slurm, parts.journal, parts.config, time.time)
    assert [(s.node, s.why) for s in pool.status()] == [
        ("node5", "no burn-in passed in the last 24 h")]
    burn_in_spare(tmp_path, slurm)
    assert [s.node for s in pool.ready()] == ["node5"]
    assert parts.controller.world.ready_spares() == 1  # what the controller's metric shows
    try:
        det.push(xid("node3"))
        run_until_done(parts)
    finally:
        parts.controller.stop()
    [swap] = parts.journal.actions(action="spare_swap")
    assert swap.state == "verified", swap.error
    inc = parts.journal.incident(swap.incident_id)
    reason = f"sentinel: XID 79 (fallen off the bus) on node3 GPU 3: 1 new [incident {inc.id}]"
    # Every change sentinel made to the cluster, in order, each once.
    assert scontrol_writes(tmp_path)[-6:] == [
        f"update NodeName=node3 State=DRAIN Reason={reason}",
        "update ReservationName=train Nodes=node1,node2,node4,node5",
        f"requeue {job}",
        "create reservation ReservationName=sentinel-burnin-node3 Nodes=node3 StartTime=now "
        "Duration=infinite Users=root Flags=MAINT,IGNORE_JOBS",
        "update NodeName=node3 State=RESUME",
        "delete ReservationName=sentinel-burnin-node3",
    ]
    j = parts.slurm.job(job)
    assert j.running and j.nodes == ("node1", "node2", "node4", "node5") and j.restarts == 1
    starts = [line for line in (tmp_path / "job.out").read_text().splitlines()
              if line.startswith("start")]
    assert [s.split()[2:] for s in starts] == [["restarts=0", "nodes=node[1-4]"],
                                               ["restarts=1", "nodes=node[1-2,4-5]"]]
    assert parts.slurm.reservation("train").nodes == ("node1", "node2", "node4", "node5")
    n3 = parts.slurm.node("node3")
    assert not n3.drained  # passed its burn-in: back in the pool
    assert parts.slurm.reservation("sentinel-burnin-node3") is None
    steps = swap.outcome["steps"]
    assert steps["burnin_run"]["ok"] is True and steps["burnin_run"]["verdicts"] == {"0": "OK"}
    assert inc.state == "recovered"
    assert "runs on node1,node2,node4,node5 with spare node5" in swap.outcome["verify"]["summary"]


def test_spare_swap_failing_burnin_keeps_the_node_drained_with_its_verdict(slurm, tmp_path):
    job = start_job(slurm, tmp_path / "job.out")
    burn_in_spare(tmp_path, slurm)  # the spare's burn-in passes; node3's will fail
    parts, _ = controller(tmp_path, slurm, [xid("node3")], verdict="fail")
    try:
        run_until_done(parts)
    finally:
        parts.controller.stop()
    [swap] = parts.journal.actions(action="spare_swap")
    assert swap.state == "verified", swap.error
    n3 = parts.slurm.node("node3")
    assert n3.drained
    assert n3.reason == f"sentinel: burn-in failed: GPU 0 LOW_FLOPS [incident {swap.incident_id}]"
    assert parts.slurm.reservation("sentinel-burnin-node3") is None
    j = parts.slurm.job(job)
    assert j.running and "node5" in j.nodes and "node3" not in j.nodes
    v = swap.outcome["verify"]
    assert v["burnin_ok"] is False and "kept drained for a person" in v["summary"]
    # Not a spare again, and sentinel will not burn it in again on its own.
    assert "node3" not in [s.node for s in SparePool(parts.slurm, parts.journal, parts.config,
                                                       time.time).ready()]


def test_node_drained_by_someone_else_is_never_touched(slurm, tmp_path):
    start_job(slurm, tmp_path / "job.out")
    burn_in_spare(tmp_path, slurm)  # a ready spare: the policy lets the swap be planned
    (tmp_path / "writes.jsonl").unlink()
    slurm.run("scontrol", "update", "NodeName=node3", "State=DRAIN",
              "Reason=ops: DIMM B2 reseated, watching it")
    # No cooldown: node5 was burned in a moment ago (the admission above).
    parts, det = controller(tmp_path, slurm, [xid("node3")],
                            policy={"cooldown_node_seconds": 0})
    try:
        run_until_done(parts)
        # node5, no longer in the pool, drained by a person too; a throttle there asks for
        # a burn-in (it runs no followed job).
        slurm.run("scontrol", "update", "NodeName=node5", "State=DRAIN", "Reason=ops: RMA 4411")
        det.push(Finding(kind="gpu_throttle", severity="warning", suggested_action="burnin",
                         summary="node5 GPU 0 thermal slowdown", detector="gpu_throttle",
                         node="node5", gpu="0"))
        run_until_done(parts)
    finally:
        parts.controller.stop()
    acts = {a.node: a for a in parts.journal.actions() if a.action != "burnin"
            or a.node != "node5" or a.state != "verified"}
    assert acts["node3"].action == "spare_swap" and acts["node3"].state == "failed"
    assert "not by sentinel: sentinel never touches it" in acts["node3"].error
    assert acts["node5"].action == "burnin" and acts["node5"].state == "failed"
    assert "drained by root" in acts["node5"].error
    assert scontrol_writes(tmp_path) == []
    assert parts.slurm.node("node3").reason == "ops: DIMM B2 reseated, watching it"
    assert parts.slurm.node("node5").reason == "ops: RMA 4411"
    states = {(i.node, i.kind): i.state for i in parts.journal.incidents()}
    assert states[("node3", "gpu_xid")] == "escalated"
    assert states[("node5", "gpu_throttle")] == "escalated"


def test_no_ready_spare_drains_nothing(slurm, tmp_path):
    start_job(slurm, tmp_path / "job.out")
    parts, _ = controller(tmp_path, slurm, [xid("node3")])
    try:
        parts.controller.cycle()
    finally:
        parts.controller.stop()
    [d] = parts.journal.decisions()
    assert d["refusal"] == "no_ready_spare" and d["escalate"] is True
    assert parts.journal.actions() == [] and scontrol_writes(tmp_path) == []
    assert not parts.slurm.node("node3").drained


def test_breaker_trips_when_asked_to_drain_too_many(slurm, tmp_path):
    # No job: each node is drained and burned in (no swap). With 5 nodes the breaker's
    # limit is 1 drain per window (policy.breaker_max_fraction 0.1, at least 1).
    parts, det = controller(tmp_path, slurm)
    try:
        det.push(xid("node1"))
        run_until_done(parts)
        det.push(xid("node2"))
        parts.controller.cycle()
        det.push(xid("node4"))
        parts.controller.cycle()
    finally:
        parts.controller.stop()
    assert parts.journal.breaker().open
    assert "over the limit of 1" in parts.journal.breaker().reason
    refusals = [d["refusal"] for d in parts.journal.decisions() if d["action"] == "spare_swap"]
    assert refusals == [None, "breaker_open", "breaker_open"]
    drains = [w for w in scontrol_writes(tmp_path) if "State=DRAIN" in w]
    assert [w.split()[1] for w in drains] == ["NodeName=node1"]
    states = slurm.node_states()
    assert states["node2"] == "idle" and states["node4"] == "idle"
