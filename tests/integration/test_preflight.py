"""`sentinel preflight` against real parts: a local Slurm, a real agent, a real Prometheus.

The whole checklist of a job on this machine (no GPU: the burn-in is skipped, saying
why), then each failing case the checks exist for: no ready spare, a partition whose
test job cannot run again after its requeue, Prometheus not scraping an agent (down,
no target, training labels renamed), a Reporter that does not reach the agent.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sentinel.burnin.replay import RECORDINGS
from sentinel.burnin.report import write_textfile
from sentinel.controller.actions.burnin import read_report
from sentinel.preflight.checks import prometheus, reporter, requeue
from sentinel.preflight.checks.base import Context
from sentinel.preflight.config import load_setup
from sentinel.preflight.runner import run_checks, slurm_of
from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent
from tests.support.burnin_replay import recorded
from tests.support.services import run_prometheus
from tests.support.slurm import SlurmCluster, run_slurm
from tests.support.strictjson import strict_loads

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    # node5 is the staged spare; partition "broken" (node4) is taken down by a test.
    with run_slurm(tmp_path_factory.mktemp("slurm"), 5, partitions={"broken": ["node4"]}) as c:
        yield c


@pytest.fixture
def slurm(cluster, monkeypatch) -> SlurmCluster:
    cluster.reset()
    cluster.run("scontrol", "update", "PartitionName=broken", "State=UP")
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return cluster


def write_config(tmp: Path, data: dict) -> Path:
    p = tmp / "sentinel.yml"
    p.write_text(yaml.safe_dump(data))
    return p


def preflight(config: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "sentinel", "preflight", "--config", str(config),
                        "--json", *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ))
    assert r.stdout, r.stderr
    return r.returncode, strict_loads(r.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def no_test_job_left(c: SlurmCluster) -> bool:
    out = c.run("squeue", "-h", "-o", "%j|%T").stdout
    return requeue.JOB_NAME not in out


def test_a_ready_job_passes_every_check_and_a_missing_spare_fails(slurm, tmp_path):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    # node5's agent exported a passing burn-in (recorded on an H200, renamed to node5).
    write_textfile(textdir / "burnin.prom", dataclasses.replace(
        read_report(recorded("pass")), hostname="node5", finished_at=time.time() - 60))
    with run_agent(tmp_path / "agent", ["--textfile-dir", str(textdir)]) as agent, \
            run_prometheus(tmp_path / "prom", extra_config={"scrape_configs": [
                {"job_name": "sentinel-agent", "honor_labels": True,
                 "static_configs": [{"targets": [agent.hostport]}]}]}) as prom:
        prom.wait_for('sentinel_burnin_ok{hostname="node5"}')
        cfg = write_config(tmp_path, {
            "agent": {"listen_address": agent.hostport, "socket": agent.socket_path},
            "controller": {"scheduler": "slurm", "prometheus_url": prom.url,
                           "journal": str(tmp_path / "controller.db")},
            "jobs": [{"name": "gpt-7b", "run_dir": str(tmp_path / "run")}],
            "preflight": {"partition": "gpu", "checkpoint_bytes": 1 << 20,
                          "roundtrip_bytes": 1 << 16, "requeue_timeout_seconds": 60}})
        rc, rep = preflight(cfg)
        checks = by_name(rep)
        assert {n: c["status"] for n, c in checks.items()} == {
            "config": "ok", "burnin": "skipped", "checkpoint": "ok", "storage": "ok",
            "requeue": "ok", "prometheus": "ok", "reporter": "ok", "spare": "ok"}, rep
        assert (rc, rep["exit_code"], rep["job"]) == (0, 0, "gpt-7b")
        assert "needs CUDA" in checks["burnin"]["summary"]
        ck = checks["checkpoint"]["evidence"]
        assert ck["directory"] == str(tmp_path / "run" / "checkpoints")
        rq = checks["requeue"]["evidence"]
        assert rq["partition"] == "gpu" and rq["cancelled"] is True
        assert rq["start_on"] and rq["rerun_on"]
        assert "was requeued and ran again" in checks["requeue"]["summary"]
        assert checks["prometheus"]["evidence"]["targets"] == {agent.hostport: 1.0}
        assert checks["reporter"]["evidence"]["job"].startswith("sentinel-preflight-")
        sp = checks["spare"]
        assert sp["evidence"]["pool"] == {"node5": "ready"}
        assert sp["summary"].startswith("1 of 1 spare(s) ready: node5 (burn-in 0.0 h ago)")
        assert sp["evidence"]["burnin_sources"][0].startswith("no journal at")
        assert not (tmp_path / "controller.db").exists()  # never created by preflight
        assert no_test_job_left(slurm)

        # A person drains the spare: no ready spare is a problem, exit 1.
        slurm.run("scontrol", "update", "NodeName=node5", "State=DRAIN", "Reason=ops: fan")
        rc, rep = preflight(cfg, "--only", "spare")
        spare = by_name(rep)["spare"]
        assert (rc, spare["status"]) == (1, "problem")
        assert spare["summary"] == "no ready spare among 1: node5: not free (IDLE+DRAIN)"


def test_requeue_in_a_partition_that_is_down_fails_at_once(slurm, tmp_path):
    slurm.run("scontrol", "update", "PartitionName=broken", "State=DOWN")
    cfg = write_config(tmp_path, {"controller": {"scheduler": "slurm"},
                                  "preflight": {"partition": "broken",
                                                "requeue_timeout_seconds": 120}})
    t = time.monotonic()
    rc, rep = preflight(cfg, "--only", "requeue")
    rq = by_name(rep)["requeue"]
    assert (rc, rq["status"]) == (1, "problem")
    assert "cannot run in its partition (state PENDING, reason PartitionDown)" in rq["summary"]
    assert time.monotonic() - t < 60  # not the 120 s timeout
    assert rq["evidence"]["cancelled"] is True and no_test_job_left(slurm)


def test_requeue_that_never_runs_again_times_out(slurm, tmp_path):
    """The test job runs on the partition's only node, which is drained under it."""
    setup = load_setup(str(write_config(tmp_path, {
        "controller": {"scheduler": "slurm"},
        "preflight": {"partition": "broken", "requeue_timeout_seconds": 12}})))
    ctx = Context(setup=setup)
    ctx.slurm, ctx.no_slurm = slurm_of(setup)
    real_requeue = ctx.slurm.requeue

    def drain_then_requeue(job_id: str) -> None:
        # A node gone bad between the first start and the requeue: nowhere to run again.
        slurm.run("scontrol", "update", "NodeName=node4", "State=DRAIN", "Reason=ops: test")
        real_requeue(job_id)

    ctx.slurm.requeue = drain_then_requeue
    res = requeue.check(ctx)
    assert res.status == "problem"
    assert "had not run again after 12 s (state PENDING" in res.summary
    assert res.evidence["start_on"] == ["node4"] and res.evidence["cancelled"] is True
    assert no_test_job_left(slurm)


def test_burnin_of_slurm_nodes_runs_on_each_and_names_the_one_that_failed(slurm, tmp_path):
    """`preflight.burnin_nodes`: the burn-in command through srun on each node, at once.

    The nodes have no GPU, so the command is the REPLAY of the recorded H200 burn-ins
    (sentinel.burnin.replay): node1 replays the passing run, node2 the failing.
    """
    fix = RECORDINGS
    for node, verdict in (("node1", "pass"), ("node2", "fail")):
        for suffix in (".report.json", ".jsonl"):
            (tmp_path / f"{node}{suffix}").write_text(
                (fix / f"h200-{verdict}{suffix}").read_text())
    cfg = write_config(tmp_path, {"controller": {"scheduler": "slurm"}, "preflight": {
        "burnin_nodes": "node[1-2]", "burnin_timeout_seconds": 60,
        "burnin_command": ["srun", "-w", "{node}", "-N1", "--time={minutes}", sys.executable,
                           "-m", "sentinel.burnin.replay", f"{tmp_path}/{{node}}.report.json"]}})
    rc, rep = preflight(cfg, "--only", "burnin")
    b = by_name(rep)["burnin"]
    assert (rc, b["status"]) == (1, "problem")
    assert b["summary"] == "1 of 2 node(s) failed: node2: GPU 0 LOW_FLOPS"
    nodes = b["evidence"]["nodes"]
    assert nodes["node1"]["status"] == "ok" and nodes["node1"]["gpus"][0]["verdict"] == "OK"
    assert nodes["node1"]["summary"].startswith("node1: 1 GPU(s) passed (NVIDIA H200")
    assert nodes["node2"]["exit_code"] == 1


def test_without_slurm_the_slurm_checks_are_skipped_naming_why(tmp_path):
    setup = load_setup(str(write_config(tmp_path, {"controller": {"scheduler": "none"}})))
    ctx = Context(setup=setup)
    ctx.slurm, ctx.no_slurm = slurm_of(setup)
    rep = run_checks(ctx, only=["requeue", "spare"])
    got = {c.name: (c.status, c.summary) for c in rep.checks if c.name in ("requeue", "spare")}
    assert got == dict.fromkeys(("requeue", "spare"),
                                ("skipped", "no Slurm: controller.scheduler is none"))
    assert rep.exit_code == 0


def test_prometheus_not_scraping_the_agents_is_a_problem(tmp_path):
    with run_agent(tmp_path / "agent") as agent:
        rep = Reporter("train-x", rank=0, socket_path=agent.socket_path)
        rep.step(1, loss=2.0, tokens=10)
        scrape = [
            {"job_name": "sentinel-agent", "honor_labels": True,
             "static_configs": [{"targets": [agent.hostport]}]},
            # An agent that is not there (nothing listens on port 9).
            {"job_name": "one-down", "honor_labels": True,
             "static_configs": [{"targets": [agent.hostport, "127.0.0.1:9"]}]},
            # The usual mistake: the training job's label renamed exported_job.
            {"job_name": "no-honor", "static_configs": [{"targets": [agent.hostport]}]},
        ]
        with run_prometheus(tmp_path / "prom", extra_config={"scrape_configs": scrape}) as prom:
            prom.wait_for('up{job="one-down",instance="127.0.0.1:9"} == 0')
            prom.wait_for('sentinel_train_rank_info{job="no-honor",exported_job="train-x"}')
            prom.wait_for('up{job="sentinel-agent"} == 1')

            def check(job: str, url: str = prom.url):
                return prometheus.check(Context(setup=load_setup(None, {
                    "prometheus_url": url, "agent_scrape_job": job})))

            assert check("sentinel-agent").status == "ok"
            down = check("one-down")
            assert down.status == "problem"
            assert down.summary.startswith("1 of 2 agent(s) down: 127.0.0.1:9")
            renamed = check("no-honor")
            assert renamed.status == "problem" and "lacks honor_labels: true" in renamed.summary
            none = check("agents")
            assert none.status == "problem"
            assert "no target in scrape job 'agents'" in none.summary
            dead = check("sentinel-agent", "http://127.0.0.1:9")
            assert dead.status == "problem" and "Prometheus did not answer" in dead.summary


def test_a_reporter_that_does_not_reach_the_agent_is_a_problem(tmp_path):
    def check(sock: str, url: str, timeout: float = 3.0):
        return reporter.check(Context(setup=load_setup(None, {
            "agent_socket": sock, "agent_url": url, "report_timeout_seconds": timeout})))

    # The agent accepts reports of another uid only: ours are dropped, never shown.
    with run_agent(tmp_path / "picky", env={"SENTINEL_AGENT_REPORT_ALLOW_UIDS":
                                            str(os.getuid() + 4242)}) as picky:
        res = check(picky.socket_path, picky.url)
        assert res.status == "problem"
        assert "did not show them within 3 s" in res.summary and res.evidence["sent"] == 2
    with run_agent(tmp_path / "agent") as agent:
        assert check(agent.socket_path, agent.url).status == "ok"
        missing = check(str(tmp_path / "nope.sock"), agent.url)
        assert missing.status == "problem" and "no report socket at" in missing.summary
        # The right socket, but the HTTP address of nothing: nothing reads it back.
        wrong = check(agent.socket_path, "http://127.0.0.1:9", timeout=1.0)
        assert wrong.status == "problem" and "Connection refused" in wrong.evidence["last_error"]
