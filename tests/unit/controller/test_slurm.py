"""sentinel.controller.slurm on output captured from the local Slurm 22.05 (fixtures/slurm)."""

from __future__ import annotations

import json
import subprocess

import pytest

from sentinel.controller.model import PERMANENT, TRANSIENT, ActionFailed
from sentinel.controller.slurm import (
    JOB_FIELDS,
    OWNER_PREFIX,
    REASON_MAX,
    Node,
    Slurm,
    SlurmError,
    classify,
    drain_reason,
    expand_hostlist,
    is_write,
    owned,
    owned_reason,
    parse_jobs,
    parse_reservations,
    parse_sinfo_json,
    slurm_failures,
)
from tests.support.slurm import Done, Replay, error, from_error, text

# -- parsing -----------------------------------------------------------------------------


def test_sinfo_json_nodes_states_reasons_features():
    nodes = parse_sinfo_json(text("sinfo-running.json"))
    assert sorted(nodes) == ["node1", "node2", "node3", "node4", "node5"]
    n3 = nodes["node3"]
    # Drained while the job still runs: ALLOCATED + DRAIN, the reason exactly as set.
    assert (n3.state, n3.flags) == ("ALLOCATED", frozenset({"DRAIN"}))
    assert n3.drained and n3.busy and not n3.free and owned(n3)
    assert n3.reason == "sentinel: XID 79 (fallen off the bus) on node3 GPU 3 [incident i-0c1d]"
    assert n3.reason_user == "root"
    assert nodes["node5"].features == ("staged",) and nodes["node5"].free
    assert nodes["node5"].partitions == ("gpu",)
    assert nodes["node1"].features == () and not nodes["node1"].free
    # NodeAddr and NodeHostname (the file_sd targets of `sentinel deploy file-sd`).
    assert (nodes["node5"].address, nodes["node5"].hostname) == ("127.0.0.1", "vm")


def test_sinfo_json_reason_of_a_person_with_equals_signs_is_whole_and_not_ours():
    nodes = parse_sinfo_json(text("sinfo-burnin.json"))
    n2 = nodes["node2"]
    assert n2.reason == "ops: DIMM B2 Replaced=yes, see ticket 4411"
    assert n2.drained and not owned(n2)
    assert n2.describe() == "ALLOCATED+DRAIN+RESERVED"
    # A node just resumed for its burn-in: slurmctld has not heard from it yet.
    assert nodes["node3"].flags == {"NOT_RESPONDING"} and not nodes["node3"].free
    assert not nodes["node3"].drained


def test_sinfo_json_in_band_error_with_exit_code_0_is_transient():
    doc = error("error-unreachable-sinfo.json")
    assert doc["returncode"] == 0  # what 22.05 does: the error is inside the JSON
    with pytest.raises(SlurmError) as e:
        parse_sinfo_json(doc["stdout"])
    assert e.value.outcome_class == TRANSIENT
    assert "Unspecified error" in str(e.value)


def test_sinfo_json_later_versions_state_list():
    doc = {"nodes": [{"name": "n1", "state": ["IDLE", "DRAIN"], "reason": "sentinel: x",
                      "features": "a,b", "partitions": ["p"]}], "errors": []}
    n = parse_sinfo_json(json.dumps(doc))["n1"]
    assert (n.state, n.flags, n.features) == ("IDLE", {"DRAIN"}, ("a", "b"))
    assert owned(n)


def test_sinfo_json_garbage_is_an_error_naming_the_command():
    with pytest.raises(SlurmError, match="sinfo --json: output is not JSON"):
        parse_sinfo_json("sinfo: error: something")


def test_reservations_parsed_and_expanded():
    res = parse_reservations(text("reservations.txt"))
    assert sorted(res) == ["sentinel-burnin-node3", "train"]
    assert res["train"].nodes == ("node1", "node2", "node4", "node5")
    assert res["train"].users == ("root",) and res["train"].state == "ACTIVE"
    assert res["sentinel-burnin-node3"].flags == {"MAINT", "IGNORE_JOBS", "SPEC_NODES"}
    assert parse_reservations(text("reservations-none.txt")) == {}
    assert parse_reservations(text("reservation-train.txt"))["train"].nodes[-1] == "node5"


def test_jobs_running_requeued_and_swapped():
    run = parse_jobs(text("squeue-running.txt"))[0]
    assert (run.id, run.name, run.state, run.reservation) == ("1", "gpt-7b", "RUNNING", "train")
    assert run.nodes == ("node1", "node2", "node3", "node4")
    assert run.requeue and run.restarts == 0 and run.running
    req = parse_jobs(text("squeue-requeued.txt"))[0]
    # Right after `scontrol requeue`: pending (BeginTime), restart count already +1.
    assert (req.state, req.restarts, req.nodes, req.reason) == ("PENDING", 1, (), "BeginTime")
    new = parse_jobs(text("squeue-swapped.txt"))[0]
    assert new.running and new.nodes == ("node1", "node2", "node4", "node5")


def test_job_name_with_separator_and_spaces_survives():
    j = parse_jobs(text("squeue-by-name.txt"))[0]
    assert j.name == "eval run|2 x=1"
    assert j.reservation == "" and j.state == "PENDING" and j.nodes == ()


def test_job_line_with_missing_fields_is_a_clear_error():
    with pytest.raises(SlurmError, match=f"expected {len(JOB_FIELDS)} fields"):
        parse_jobs("1|RUNNING\n")


@pytest.mark.parametrize(("hostlist", "names"), [
    ("node[1-2,4-5]", ["node1", "node2", "node4", "node5"]),
    ("gpu[01-03],cpu7", ["gpu01", "gpu02", "gpu03", "cpu7"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("node3", ["node3"]),
    ("(null)", []),
    ("", []),
])
def test_expand_hostlist(hostlist, names):
    assert expand_hostlist(hostlist) == names


def test_expand_hostlist_bad_range_names_it():
    with pytest.raises(ValueError, match="bad range 'x-2'"):
        expand_hostlist("node[x-2]")


# -- errors and their classes ------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "cls"), [
    ("error-unreachable-squeue.json", TRANSIENT),
    ("error-job-invalid.json", PERMANENT),
    ("error-node-invalid.json", PERMANENT),
    ("error-requeue-invalid.json", PERMANENT),
    ("error-resume-idle.json", PERMANENT),
    ("error-delete-missing.json", PERMANENT),
    ("error-plus-equals.json", PERMANENT),
])
def test_classify_captured_errors(fixture, cls):
    e = error(fixture)
    assert e["returncode"] != 0
    assert classify(e["stderr"] or e["stdout"]) == cls


def test_write_failure_carries_command_and_slurm_message():
    s = Slurm(runner=Replay({"scontrol update": from_error("error-node-invalid.json")}))
    with pytest.raises(SlurmError) as e:
        s.drain("node9", "sentinel: x")
    assert e.value.outcome_class == PERMANENT
    assert e.value.command == ["scontrol", "update", "NodeName=node9", "State=DRAIN",
                               "Reason=sentinel: x"]
    assert e.value.slurm_message == "slurm_update error: Invalid node name specified"
    assert "NodeName=node9" in str(e.value) and "Invalid node name" in str(e.value)


def test_unreachable_controller_is_transient():
    s = Slurm(runner=Replay({"squeue": from_error("error-unreachable-squeue.json")}))
    with pytest.raises(SlurmError) as e:
        s.job("1")
    assert e.value.transient and "Unable to contact slurm controller" in str(e.value)


def test_timeout_is_transient_and_says_which_setting():
    r = Replay({"scontrol": subprocess.TimeoutExpired(["scontrol"], 7)})
    s = Slurm(timeout=7, runner=r)
    with pytest.raises(SlurmError) as e:
        s.requeue("12")
    assert e.value.transient
    assert "scontrol requeue 12: no answer within 7 s (controller.slurm_timeout_seconds)" \
        in str(e.value)
    assert r.calls[0][1] == 7


def test_missing_tool_is_permanent_and_names_bin_dir():
    s = Slurm(bin_dir="/opt/slurm/bin", runner=Replay({"/opt/slurm/bin/sinfo": FileNotFoundError(
        2, "No such file")}))
    with pytest.raises(SlurmError) as e:
        s.nodes()
    assert e.value.outcome_class == PERMANENT and "controller.slurm_bin_dir" in str(e.value)


def test_bin_dir_and_slurm_conf_are_honoured():
    r = Replay({})
    s = Slurm(bin_dir="/opt/slurm/bin", conf="/etc/slurm-test/slurm.conf", runner=r)
    s.resume("node3")
    s.run(["srun", "-w", "node3", "python", "x.py"], timeout=99, check=False)
    s.run(["python", "x.py"], check=False)
    (a1, t1, env1), (a2, t2, _), (a3, _, _) = r.calls
    assert a1 == ["/opt/slurm/bin/scontrol", "update", "NodeName=node3", "State=RESUME"]
    assert env1["SLURM_CONF"] == "/etc/slurm-test/slurm.conf"
    assert a2[0] == "/opt/slurm/bin/srun" and t2 == 99 and t1 == 30.0
    assert a3[0] == "python"  # not a Slurm tool: left alone


def test_reads_through_the_client():
    r = Replay({
        "sinfo --json": Done(0, text("sinfo-running.json"), ""),
        "scontrol -o show reservation train": Done(0, text("reservation-train.txt"), ""),
        "scontrol -o show reservation nope": from_error("error-reservation-missing.json"),
        "scontrol -o show reservation": Done(0, text("reservations.txt"), ""),
        "squeue -h -t all -j 99999": from_error("error-job-invalid.json"),
        "squeue -h -t all -n gpt-7b": Done(0, text("squeue-swapped.txt"), ""),
    })
    s = Slurm(runner=r)
    assert s.node("node3").drained
    with pytest.raises(SlurmError) as e:
        s.node("node9")
    assert e.value.outcome_class == PERMANENT and "node1, node2" in str(e.value)
    assert s.reservation("train").nodes[-1] == "node5"
    assert s.reservation("nope") is None  # "Reservation nope not found" on stdout, rc 1
    assert set(s.reservations()) == {"train", "sentinel-burnin-node3"}
    assert s.job("99999") is None
    assert s.job("gpt-7b").nodes == ("node1", "node2", "node4", "node5")
    assert [c[0][:6] for c in r.calls][-1] == ["squeue", "-h", "-t", "all", "-n", "gpt-7b"]


def test_writes_are_argv_lists_and_move_sets_the_whole_list():
    r = Replay({})
    s = Slurm(runner=r)
    s.set_reservation_nodes("train", ["node1", "node2", "node4", "node5"])
    s.create_reservation("sentinel-burnin-node3", ["node3"], ["root"])
    s.delete_reservation("sentinel-burnin-node3")
    s.drain("node3", "sentinel: XID 79 [incident i-1]")
    assert [c[0] for c in r.calls] == [
        ["scontrol", "update", "ReservationName=train", "Nodes=node1,node2,node4,node5"],
        ["scontrol", "create", "reservation", "ReservationName=sentinel-burnin-node3",
         "Nodes=node3", "StartTime=now", "Duration=infinite", "Users=root",
         "Flags=MAINT,IGNORE_JOBS"],
        ["scontrol", "delete", "ReservationName=sentinel-burnin-node3"],
        ["scontrol", "update", "NodeName=node3", "State=DRAIN",
         "Reason=sentinel: XID 79 [incident i-1]"],
    ]
    assert all(is_write(c[0]) for c in r.calls)
    assert not is_write(["scontrol", "-o", "show", "reservation"])
    assert not is_write(["squeue", "-h"])


def test_submit_wraps_the_command_and_reads_the_job_id():
    r = Replay({"sbatch": Done(0, "42;sentineltest\n", "")})
    s = Slurm(runner=r, bin_dir="/opt/slurm/bin")
    assert s.submit(["--requeue", "--partition=gpu"], "sleep 60") == "42"
    assert r.calls[0][0] == ["/opt/slurm/bin/sbatch", "--parsable", "--requeue",
                             "--partition=gpu", "--wrap=sleep 60"]
    assert is_write(r.calls[0][0])
    bad = Slurm(runner=Replay({"sbatch": Done(0, "Submitted batch job\n", "")}))
    with pytest.raises(SlurmError, match="no job id in its output"):
        bad.submit([], "true")
    refused = Slurm(runner=Replay({"sbatch": Done(
        1, "", "sbatch: error: invalid partition specified: nope\n")}))
    with pytest.raises(SlurmError, match="invalid partition") as e:
        refused.submit(["--partition=nope"], "true")
    assert e.value.outcome_class == PERMANENT


def test_cancel_of_a_job_already_gone_is_not_an_error():
    gone = Replay({"scancel": Done(1, "", "scancel: error: Kill job error on job id 7: "
                                   "Invalid job id specified\n")})
    Slurm(runner=gone).cancel("7")
    assert gone.calls[0][0] == ["scancel", "7"]
    down = Slurm(runner=Replay({"scancel": Done(
        1, "", "scancel: error: Unable to contact slurm controller (connect failure)\n")}))
    with pytest.raises(SlurmError) as e:
        down.cancel("7")
    assert e.value.transient


# -- owner scope -------------------------------------------------------------------------


def test_drain_reason_is_one_line_owned_and_bounded():
    r = drain_reason("XID 79 on\nnode3   GPU 3", "i-0c1d")
    assert r == "sentinel: XID 79 on node3 GPU 3 [incident i-0c1d]"
    long = drain_reason("x" * 500, "i-0c1d")
    assert len(long) == REASON_MAX and long.startswith(OWNER_PREFIX)
    assert long.endswith("... [incident i-0c1d]")


def test_owned_reason_names_its_source():
    assert owned_reason("burn-in failed: GPU 0 LOW_FLOPS", "healthcheck") == (
        "sentinel: burn-in failed: GPU 0 LOW_FLOPS [healthcheck]")
    assert len(owned_reason("y" * 300, "healthcheck")) == REASON_MAX


def test_owned_needs_drain_and_our_prefix():
    assert owned(Node("a", "IDLE", frozenset({"DRAIN"}), reason="sentinel: x"))
    assert not owned(Node("a", "IDLE", frozenset({"DRAIN"}), reason="ops: sentinel: x"))
    assert not owned(Node("a", "IDLE", frozenset(), reason="sentinel: x"))  # not drained


def test_slurm_failures_keeps_the_outcome_class():
    @slurm_failures
    def step() -> None:
        raise SlurmError("squeue: timed out", TRANSIENT, ["squeue"], "timed out")

    with pytest.raises(ActionFailed) as e:
        step()
    assert e.value.outcome_class == TRANSIENT and e.value.data == {"command": ["squeue"]}
