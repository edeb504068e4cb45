"""burnin and spare_swap plans on Slurm output captured from the local cluster: the refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sentinel.controller.actions import ACTIONS
from sentinel.controller.actions.base import ActionContext
from sentinel.controller.actions.burnin import (
    fill_command,
    read_report,
    report_document,
    reservation_name,
)
from sentinel.controller.config import ControllerConfig, JobSpec, PolicyConfig
from sentinel.controller.journal import Journal
from sentinel.controller.model import PERMANENT, ActionFailed
from sentinel.controller.policy import Decision
from sentinel.controller.slurm import Slurm
from sentinel.controller.spares import SlurmWorld, SparePool
from sentinel.rules.finding import Finding
from tests.support.burnin_replay import FIXTURES as BURNIN
from tests.support.burnin_replay import recorded
from tests.support.slurm import Done, Replay, from_error, text


def answers(sinfo: str = "sinfo-running.json", **extra: Done) -> dict[str, Done]:
    """Captured answers: the job gpt-7b running on node[1-4] in reservation train."""
    out = {
        "sinfo --json": Done(0, text(sinfo) if sinfo.endswith(".json") else sinfo, ""),
        "scontrol -o show reservation train": Done(
            0, text("reservations.txt").replace("node[1-2,4-5]", "node[1-4]").splitlines()[0]
            + "\n", ""),
        "scontrol -o show reservation": Done(0, text("reservations-none.txt"), ""),
        "squeue -h -t all -n gpt-7b": Done(0, text("squeue-running.txt"), ""),
        "squeue -h -t all -n other": from_error("error-job-invalid.json"),
    }
    out.update(extra)
    return out


def ctx(tmp: Path, runner: Replay, reservation: str = "train") -> ActionContext:
    cfg = ControllerConfig(journal=str(tmp / "c.db"), listen_address="")
    return ActionContext(
        config=cfg, policy=PolicyConfig(), journal=Journal(cfg.journal), clock=time.time,
        jobs={"gpt-7b": JobSpec(name="gpt-7b", reservation=reservation)}, sleep=time.sleep,
        steps_of=lambda job: [], slurm=Slurm(runner=runner))


def xid(node: str) -> Finding:
    return Finding(kind="gpu_xid", severity="critical", suggested_action="spare_swap",
                   summary=f"XID 79 on {node} GPU 3", detector="gpu_errors", node=node,
                   job="gpt-7b", gpu="3")


def plan(action: str, c: ActionContext, f: Finding) -> dict:
    inc = c.journal.open_incident(f"node/{f.node}", f.to_dict())
    return ACTIONS[action].plan(c, inc, f, Decision(action, "act", "test"))


def test_spare_swap_refuses_a_node_drained_by_a_person(tmp_path):
    c = ctx(tmp_path, Replay(answers("sinfo-burnin.json")))
    with pytest.raises(ActionFailed) as e:
        plan("spare_swap", c, xid("node2"))
    assert e.value.outcome_class == PERMANENT
    assert "node2 is drained by root with reason 'ops: DIMM B2 Replaced=yes, see ticket 4411'" \
        in str(e.value) and "never touches it (owner scope)" in str(e.value)


def test_spare_swap_refuses_without_a_ready_spare(tmp_path):
    # node5 is idle and staged, but nothing says it passed a burn-in.
    c = ctx(tmp_path, Replay(answers()))
    with pytest.raises(ActionFailed, match="no ready spare .* to take node1's place in job "
                                           "gpt-7b"):
        plan("spare_swap", c, xid("node1"))
    pool = SparePool(c.slurm, c.journal, c.config, time.time)
    assert [(s.node, s.ready, s.why) for s in pool.status()] == [
        ("node5", False, "no burn-in passed in the last 24 h")]


def test_spare_swap_refuses_a_job_without_reservation(tmp_path):
    c = ctx(tmp_path, Replay(answers()), reservation="")
    with pytest.raises(ActionFailed, match="job gpt-7b runs on node1 but has no reservation "
                                           r"configured \(jobs\[\].reservation\)"):
        plan("spare_swap", c, xid("node1"))


def test_spare_swap_refuses_a_job_that_cannot_be_requeued(tmp_path):
    line = text("squeue-running.txt").replace("|RUNNING|train|1|", "|RUNNING|train|0|")
    c = ctx(tmp_path, Replay(answers(**{"squeue -h -t all -n gpt-7b": Done(0, line, "")})))
    with pytest.raises(ActionFailed, match="cannot be requeued"):
        plan("spare_swap", c, xid("node1"))


def test_spare_swap_of_a_node_without_followed_job_is_drain_and_burnin(tmp_path):
    c = ctx(tmp_path, Replay(answers()))
    p = plan("spare_swap", c, xid("node5"))
    assert p["swap"] is False and p["burnin"]["reservation"] == "sentinel-burnin-node5"
    assert [s.name for s in ACTIONS["spare_swap"].steps(p)] == [
        "drain", "burnin_reserve", "burnin_resume", "burnin_run", "burnin_verdict",
        "burnin_release"]
    assert p["reason"].startswith("sentinel: XID 79 on node5 GPU 3 [incident i-")


def test_burnin_refuses_a_node_drained_by_a_person_or_one_that_failed(tmp_path):
    c = ctx(tmp_path, Replay(answers("sinfo-burnin.json")))
    with pytest.raises(ActionFailed, match="node2 is drained by root"):
        plan("burnin", c, xid("node2"))
    doc = json.loads(text("sinfo-running.json"))
    [n3] = [n for n in doc["nodes"] if n["name"] == "node3"]
    n3["reason"] = "sentinel: burn-in failed: GPU 0 LOW_FLOPS [incident i-1]"
    c = ctx(tmp_path / "b", Replay(answers(json.dumps(doc))))
    with pytest.raises(ActionFailed, match="node3 failed a burn-in before .* stays drained "
                                           "for a person"):
        plan("burnin", c, xid("node3"))


def test_burnin_refuses_a_node_running_jobs(tmp_path):
    c = ctx(tmp_path, Replay(answers()))
    with pytest.raises(ActionFailed, match=r"node1 runs jobs \(ALLOCATED\): a burn-in needs it"):
        plan("burnin", c, xid("node1"))


def test_actions_without_slurm_refuse(tmp_path):
    c = ctx(tmp_path, Replay(answers()))
    c.slurm = None
    for action in ("burnin", "spare_swap"):
        with pytest.raises(ActionFailed, match="no Slurm client"):
            plan(action, c, xid("node1"))


def test_world_snapshot_from_captured_slurm(tmp_path):
    c = ctx(tmp_path, Replay(answers()))
    w = SlurmWorld(c.slurm, c.journal, c.config, c.jobs, time.time)
    assert w.snapshot(xid("node3")) == {"nodes_total": 5, "ready_spares": 0,
                                        "node_in_job": True, "spares": []}
    assert w.snapshot(xid("node5"))["node_in_job"] is False
    assert w.ready_spares() == 0  # node5 idle and staged, but never burned in
    down = SlurmWorld(Slurm(runner=Replay({"sinfo": from_error("error-unreachable-sinfo.json")})),
                      c.journal, c.config, c.jobs, time.time)
    snap = down.snapshot(xid("node3"))
    assert (snap["ready_spares"], snap["nodes_total"]) == (-1, 0)
    assert "Unspecified error" in snap["error"]


def test_burnin_command_placeholders():
    argv = fill_command(["srun", "--reservation={reservation}", "-w", "{node}",
                         "--time={minutes}", "sentinel", "burnin", "--json"],
                        "node3", reservation_name("node3"), 10)
    assert argv == ["srun", "--reservation=sentinel-burnin-node3", "-w", "node3", "--time=10",
                    "sentinel", "burnin", "--json"]
    with pytest.raises(ActionFailed, match=r"unknown placeholder \{nodes\} .*valid: \{node\}, "
                                           r"\{reservation\}, \{minutes\}"):
        fill_command(["srun", "-w", "{nodes}"], "node3", "r", 1)


def test_report_found_on_the_verdict_line_of_real_output():
    for verdict, ok in (("pass", True), ("fail", False)):
        doc = report_document(recorded(verdict))
        assert doc["ok"] is ok and doc["gpus"][0]["name"] == "NVIDIA H200"
    whole = (BURNIN / "h200-pass.report.json").read_text()
    assert report_document(whole)["hostname"] == "vm"
    with pytest.raises(ValueError, match="no burn-in report in its output"):
        report_document((BURNIN / "h200-pass.jsonl").read_text())  # lines without a report
    with pytest.raises(ValueError, match="no burn-in report"):
        report_document("srun: error: Unable to create step for job 12\n")


def test_read_report_gives_the_verdicts():
    r = read_report(recorded("fail"))
    assert not r.ok and [v.verdict.value for v in r.verdicts] == ["LOW_FLOPS"]
    assert read_report(recorded("pass")).ok


def burnin_run(tmp: Path, stdout: str, rc: int = 0) -> tuple[dict, Replay]:
    """Run the burnin_run step of a planned burn-in against a runner printing ``stdout``."""
    from sentinel.controller.actions.base import Run

    r = Replay(answers(**{"srun": Done(rc, stdout, "")}))
    c = ctx(tmp, r)
    p = plan("burnin", c, xid("node5"))
    rec = c.journal.add_action(p["incident"], "burnin", "act", "started", plan=p, node="node5",
                               job=None)
    [step] = [s for s in ACTIONS["burnin"].steps(p) if s.name == "burnin_run"]
    return step.run(Run(ctx=c, record=rec)), r


def test_burnin_run_step_reads_the_recorded_report(tmp_path):
    out, r = burnin_run(tmp_path, recorded("fail"), rc=1)
    assert (out["ok"], out["verdicts"], out["failed"]) == (False, {"0": "LOW_FLOPS"},
                                                           "GPU 0 LOW_FLOPS")
    [srun] = [a for a, _, _ in r.calls if a[0] == "srun"]
    assert srun[:4] == ["srun", "--reservation=sentinel-burnin-node5", "-w", "node5"]
    assert burnin_run(tmp_path / "b", recorded("pass"))[0]["ok"] is True


def test_burnin_run_step_fails_on_no_report_or_no_gpu(tmp_path):
    with pytest.raises(ActionFailed, match=r"gave no report \(exit code 1\)"):
        burnin_run(tmp_path, "srun: error: Unable to allocate resources\n", rc=1)
    empty = json.loads((BURNIN / "h200-pass.report.json").read_text()) | {"gpus": []}
    with pytest.raises(ActionFailed, match="tested no GPU"):
        burnin_run(tmp_path / "b", json.dumps({"event": "verdict", "report": empty}))
