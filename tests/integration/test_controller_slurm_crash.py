"""kill -9 at every step boundary of spare_swap and burnin on a real Slurm, then restart.

Each case runs the controller (tests/support/slurm_driver.py: the daemon's wiring, a
scripted detector) in a subprocess with SENTINEL_CONTROLLER_TESTING_CRASH_AT at one
boundary, checks it died of SIGKILL there, starts it again without the hook and checks
that the action completed, that every Slurm change was made exactly once (the driver
records each write before it runs it; the job's restart count is +1), and that a step
killed after it acted was reconciled from the world, not done again.

Speed: a requeued job waits for its old credential to expire (>= 6 s, Slurm's floor), so
the cases run four at a time, each in its own lane of one 12-node cluster: a lane is a
job on two nodes in its own reservation plus a staged spare in its own partition
(controller.spare_partition), with its own journal. Lanes share nothing the controller
reads. The spare of each lane is burned in once by the burnin action itself; each case
starts from a copy of that journal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.controller.executor import CRASH_ENV
from sentinel.controller.journal import Journal
from sentinel.rules.finding import Finding
from tests.support.slurm import SlurmCluster, client, run_slurm
from tests.support.slurm_driver import ROOT, config, writes

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

LANES = 4
SWAP_STEPS = ("drain", "move", "requeue", "confirm", "burnin_reserve", "burnin_resume",
              "burnin_run", "burnin_verdict", "burnin_release")
BURNIN_STEPS = ("burnin_reserve", "burnin_resume", "burnin_run", "burnin_verdict",
                "burnin_release")
# Steps that cannot tell from the world whether they ran: run again after a crash.
NO_CHECK = ("confirm", "burnin_run")


def boundaries(action: str, steps: tuple[str, ...]) -> list[str]:
    return ([f"{action}/intent"] + [f"{action}/{s}/{w}" for s in steps
                                    for w in ("before", "after")]
            + [f"{action}/verify/before", f"{action}/verify/after"])


# (boundary, burn-in verdict replayed). A failing burn-in ends in a failed verification
# (the node goes to a person), so it has no verify/after; it runs where the verdict
# matters: the verdict's drain and everything after it.
CASES = ([(p, "pass") for p in boundaries("spare_swap", SWAP_STEPS)]
         + [(p, "pass") for p in boundaries("burnin", BURNIN_STEPS)]
         + [(f"burnin/{p}", "fail") for p in (
             "burnin_run/after", "burnin_verdict/before", "burnin_verdict/after",
             "burnin_release/before", "burnin_release/after", "verify/before")])


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}:{case[1]}"
JOB_SCRIPT = "#!/bin/bash\nexec sleep 3600\n"


@dataclass
class Lane:
    """Three nodes of the cluster: a job on a and b (reservation train-K), the spare."""

    k: int
    a: str
    b: str
    spare: str
    template: Path | None = None

    @property
    def partition(self) -> str:
        return f"lane{self.k}"

    @property
    def reservation(self) -> str:
        return f"train-{self.k}"

    @property
    def job_name(self) -> str:
        return f"gpt-{self.k}"

    @property
    def nodes(self) -> list[str]:
        return [self.a, self.b, self.spare]


@dataclass
class Outcome:
    """What one case left behind, for its test to check."""

    point: str
    lane: Lane
    job: str = ""
    rc: list[int] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    writes: list[list[str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


def lanes() -> list[Lane]:
    return [Lane(k, f"node{3 * k + 1}", f"node{3 * k + 2}", f"node{3 * k + 3}")
            for k in range(LANES)]


def xid(node: str, job: str) -> Finding:
    return Finding(kind="gpu_xid", severity="critical", suggested_action="spare_swap",
                   summary=f"XID 79 (fallen off the bus) on {node} GPU 3: 1 new",
                   detector="gpu_errors", rule="gpu-errors", job=job, node=node, gpu="3",
                   evidence={"xid": 79}, episode="79", time_start=time.time())


def throttle(node: str) -> Finding:
    return Finding(kind="gpu_throttle", severity="warning", suggested_action="burnin",
                   summary=f"{node} GPU 0 thermal slowdown 40% of the last 10 min",
                   detector="gpu_throttle", node=node, gpu="0")


def admit(node: str) -> Finding:
    return Finding(kind="spare_admission", severity="info", suggested_action="burnin",
                   summary=f"{node} staged: burn it in before it joins the spare pool",
                   detector="operator", node=node)


def drive(c: SlurmCluster, case: Path, crash_at: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SLURM_CONF=str(c.conf))
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.support.slurm_driver", str(case / "config.yml"),
         str(case / "findings.jsonl"), str(case / "writes.jsonl")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150, check=False)


def write_case(case: Path, lane: Lane, findings: list[Finding], verdict: str,
               job_id: str = "") -> None:
    case.mkdir(parents=True, exist_ok=True)
    jobs = [{"name": lane.job_name, "slurm_job": job_id or lane.job_name,
             "reservation": lane.reservation}]
    data = config(case, verdict=verdict, jobs=jobs, spare_partition=lane.partition,
                  policy={"cooldown_node_seconds": 0})
    (case / "config.yml").write_text(yaml.safe_dump(data))
    from tests.support.controller import finding_json

    (case / "findings.jsonl").write_text("".join(finding_json(f) + "\n" for f in findings))


def reset_lane(c: SlurmCluster, lane: Lane) -> None:
    """Cancel the lane's jobs, delete its reservations, resume its nodes; wait until idle."""
    c.run("scancel", "-n", lane.job_name, check=False)
    deadline = time.monotonic() + 30
    while c.run("squeue", "-h", "-n", lane.job_name, "-o", "%i").stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs of {lane.job_name} still there")
        time.sleep(0.2)
    for res in (lane.reservation, *(f"sentinel-burnin-{n}" for n in lane.nodes)):
        c.run("scontrol", "delete", f"ReservationName={res}", check=False)
    for n in lane.nodes:
        c.run("scontrol", "update", f"NodeName={n}", "State=RESUME", check=False)
    while any(c.node_states()[n] != "idle" for n in lane.nodes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"lane {lane.k} not idle: {c.node_states()}")
        time.sleep(0.2)


def facts(c: SlurmCluster, case: Path, lane: Lane, job: str, target: str) -> dict[str, Any]:
    """Read back the Slurm state and the journal after a case."""
    slurm = client(c)
    j = slurm.job(job) if job else None
    node = slurm.node(target)
    journal = Journal(case / "controller.db")
    try:
        acts = [a for a in journal.actions() if a.node == target]
        main = acts[0] if acts else None
        steps = {s.name: (s.state, s.outcome.get("reconciled") is True)
                 for s in journal.steps(main.id)} if main else {}
        incident = journal.incident(main.incident_id) if main else None
        return {
            "job": j, "node": node, "actions": [(a.action, a.state, a.error) for a in acts],
            "steps": steps, "incident": incident.state if incident else None,
            "reservation": slurm.reservation(lane.reservation),
            "burnin_reservation": slurm.reservation(f"sentinel-burnin-{target}"),
        }
    finally:
        journal.close()


def run_case(c: SlurmCluster, root: Path, lane: Lane, point: str, verdict: str) -> Outcome:
    out = Outcome(point=point, lane=lane)
    case = root / f"{point.replace('/', '_')}-{verdict}"
    reset_lane(c, lane)
    swap = point.startswith("spare_swap/")
    if swap:
        c.run("scontrol", "create", "reservation", f"ReservationName={lane.reservation}",
              f"Nodes={lane.a},{lane.b}", "StartTime=now", "Duration=infinite", "Users=root")
        out.job = c.sbatch("--requeue", "-N2", f"--reservation={lane.reservation}", "-J",
                           lane.job_name, "-o", "/dev/null", script=JOB_SCRIPT)
        c.wait_job_running(out.job)
        write_case(case, lane, [xid(lane.b, lane.job_name)], verdict, out.job)
    else:
        # A node sentinel drained earlier (say, a swap whose burn-in could not run):
        # the burnin action resumes it inside its maintenance reservation.
        c.run("scontrol", "update", f"NodeName={lane.a}", "State=DRAIN",
              "Reason=sentinel: GPU 0 throttled [incident i-earlier]")
        write_case(case, lane, [throttle(lane.a)], verdict)
    assert lane.template is not None
    shutil.copy(lane.template, case / "controller.db")
    for crash in (point, None):
        r = drive(c, case, crash)
        out.rc.append(r.returncode)
        out.logs.append(f"--- crash at {crash}: rc {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}")
    out.writes = writes(case / "writes.jsonl")
    out.facts = facts(c, case, lane, out.job, lane.b if swap else lane.a)
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Run every case, LANES at a time, on one cluster; each test then checks its own."""
    all_lanes = lanes()
    parts = {ln.partition: ln.nodes for ln in all_lanes}
    feats = {ln.spare: "staged" for ln in all_lanes}
    root = tmp_path_factory.mktemp("crash")
    with run_slurm(root / "slurm", n_nodes=3 * LANES, features=feats, partitions=parts) as c:
        def template(lane: Lane) -> None:
            case = root / f"template-{lane.k}"
            write_case(case, lane, [admit(lane.spare)], "pass")
            r = drive(c, case, None)
            assert r.returncode == 0, r.stderr
            lane.template = case / "controller.db"

        with ThreadPoolExecutor(LANES) as pool:
            list(pool.map(template, all_lanes))
        free = list(all_lanes)
        cond = threading.Condition()
        results: dict[str, Outcome] = {}

        def one(case: tuple[str, str]) -> None:
            with cond:
                cond.wait_for(lambda: bool(free))
                lane = free.pop()
            try:
                results[case_id(case)] = run_case(c, root, lane, *case)
            except BaseException as e:  # noqa: BLE001 - reported by the case's test
                results[case_id(case)] = Outcome(point=case[0], lane=lane, error=e)
            finally:
                with cond:
                    free.append(lane)
                    cond.notify()

        with ThreadPoolExecutor(LANES) as pool:
            list(pool.map(one, CASES))
        yield results


def check_common(o: Outcome) -> None:
    if o.error is not None:
        raise o.error
    logs = "\n".join(o.logs)
    assert o.rc == [-signal.SIGKILL, 0], logs
    st = o.facts["steps"]
    assert all(state == "done" for state, _ in st.values()), (st, logs)
    step = o.point.split("/")[1]
    if o.point.endswith("/after") and step != "verify" and step not in NO_CHECK:
        assert st[step][1] is True, f"{step} was not reconciled from the world: {st}\n{logs}"


@pytest.mark.parametrize("point", [p for p, _ in CASES if p.startswith("spare_swap/")])
def test_spare_swap_killed_at_every_boundary(outcomes, point):
    o = outcomes[f"{point}:pass"]
    check_common(o)
    ln, f = o.lane, o.facts
    assert f["actions"][0][:2] == ("spare_swap", "verified"), (f["actions"], o.logs)
    assert f["incident"] == "recovered"
    scontrol = [" ".join(w[1:]) for w in o.writes if w[0] == "scontrol"]
    assert [w.split("Reason=")[0] for w in scontrol] == [
        f"update NodeName={ln.b} State=DRAIN ",
        f"update ReservationName={ln.reservation} Nodes={ln.a},{ln.spare}",
        f"requeue {o.job}",
        f"create reservation ReservationName=sentinel-burnin-{ln.b} Nodes={ln.b} "
        "StartTime=now Duration=infinite Users=root Flags=MAINT,IGNORE_JOBS",
        f"update NodeName={ln.b} State=RESUME",
        f"delete ReservationName=sentinel-burnin-{ln.b}",
    ], "\n".join(o.logs)
    burnins = [w for w in o.writes if w[0] == "srun"]
    assert len(burnins) == (2 if point == "spare_swap/burnin_run/after" else 1)
    j = f["job"]
    assert j.running and j.restarts == 1 and j.nodes == (ln.a, ln.spare)
    assert f["reservation"].nodes == (ln.a, ln.spare)
    assert not f["node"].drained and f["burnin_reservation"] is None


@pytest.mark.parametrize("case", [c for c in CASES if c[0].startswith("burnin/")], ids=case_id)
def test_burnin_killed_at_every_boundary(outcomes, case):
    point, verdict = case
    o = outcomes[case_id(case)]
    check_common(o)
    ln, f = o.lane, o.facts
    action, state, error = f["actions"][0]
    scontrol = [" ".join(w[1:]) for w in o.writes if w[0] == "scontrol"]
    made = [f"create reservation ReservationName=sentinel-burnin-{ln.a} Nodes={ln.a} "
            "StartTime=now Duration=infinite Users=root Flags=MAINT,IGNORE_JOBS",
            f"update NodeName={ln.a} State=RESUME"]
    released = [f"delete ReservationName=sentinel-burnin-{ln.a}"]
    if verdict == "pass":
        assert (action, state) == ("burnin", "verified"), (error, o.logs)
        assert f["incident"] == "recovered"
        assert scontrol == made + released, "\n".join(o.logs)
        assert not f["node"].drained
    else:
        # The node is kept drained with its verdict; the incident goes to a person.
        assert (action, state) == ("burnin", "failed") and "kept drained for a person" in error
        assert f["incident"] == "escalated"
        assert [w.split("Reason=")[0] for w in scontrol] == made + [
            f"update NodeName={ln.a} State=DRAIN "] + released, "\n".join(o.logs)
        assert f["node"].drained and f["node"].reason.startswith(
            "sentinel: burn-in failed: GPU 0 LOW_FLOPS [incident ")
    burnins = [w for w in o.writes if w[0] == "srun"]
    assert len(burnins) == (2 if point == "burnin/burnin_run/after" else 1)
    assert f["burnin_reservation"] is None
