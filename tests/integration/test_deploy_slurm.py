"""deploy/ against a real local Slurm and Prometheus: file_sd from sinfo, the Slurm hooks.

- ``sentinel deploy file-sd`` reads the cluster through the controller's Slurm client and
  writes the agents' targets; the shipped deploy/prometheus/prometheus.yml (its paths
  pointed at this test's files) loads them and scrapes a real agent through them.
- deploy/slurm/sentinel-healthcheck and sentinel-prolog, installed as slurm.conf's
  HealthCheckProgram and Prolog with the lines of deploy/slurm/slurm.conf.sentinel, run
  by slurmd itself: a node whose recorded H200 burn-in failed is drained with a
  ``sentinel:`` reason, a job sent there is refused and requeued (not held).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sentinel.burnin.report import write_textfile
from sentinel.controller.actions.burnin import read_report
from sentinel.localstack.procs import wait_until
from tests.support.agent import run_agent
from tests.support.burnin_replay import recorded
from tests.support.services import run_prometheus
from tests.support.slurm import SlurmCluster, run_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SENTINEL = [sys.executable, "-m", "sentinel"]


def export(path: Path, verdict: str, host: str) -> None:
    """Write the recorded H200 burn-in (pass or fail) as ``host``'s textfile."""
    report = read_report(recorded(verdict))
    write_textfile(path, dataclasses.replace(report, hostname=host))


def hook(tmp: Path, name: str, defaults: dict[str, str]) -> Path:
    """Install a copy of a deploy/slurm hook whose defaults file is this test's."""
    conf = tmp / f"{name}.defaults"
    conf.write_text("".join(f'{k}="{v}"\nexport {k}\n' for k, v in defaults.items()))
    dst = tmp / name
    dst.write_text((DEPLOY / "slurm" / name).read_text().replace(
        "/etc/default/sentinel-slurm", str(conf)))
    dst.chmod(0o755)
    return dst


def snippet_lines(replace: dict[str, str], sched: str) -> list[str]:
    """The lines of deploy/slurm/slurm.conf.sentinel, values replaced where asked."""
    out = []
    for line in (DEPLOY / "slurm" / "slurm.conf.sentinel").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if key == "SchedulerParameters":
            value = f"{sched},{value}"  # merged into the cluster's own, as the file says
        out.append(f"{key}={replace.get(key, value)}")
    return out


def states(c: SlurmCluster) -> dict[str, tuple[str, str]]:
    out = c.run("sinfo", "-h", "-N", "-o", "%N|%T|%E").stdout
    return {n: (s, r) for n, s, r in (line.split("|", 2) for line in out.split("\n") if line)}


# -- file_sd -----------------------------------------------------------------------------

def test_file_sd_from_slurm_is_scraped_by_the_shipped_prometheus_config(tmp_path):
    with run_slurm(tmp_path / "slurm", 5, partitions={"spares": ["node5"]}) as c, \
            run_agent(tmp_path / "agent") as agent:
        out = tmp_path / "file_sd" / "sentinel-agents.json"
        out.parent.mkdir()
        port = agent.hostport.rsplit(":", 1)[1]
        cmd = [*SENTINEL, "deploy", "file-sd", f"--out={out}", f"--port={port}",
               "--label", "cluster=test"]
        r = subprocess.run(cmd, env=c.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "5 agents" in r.stdout
        groups = json.loads(out.read_text())
        assert [g["labels"]["slurm_node"] for g in groups] == c.nodes
        assert {t for g in groups for t in g["targets"]} == {f"127.0.0.1:{port}"}  # NodeAddr
        assert {g["labels"]["cluster"] for g in groups} == {"test"}
        # Unchanged node list: the file is not rewritten.
        mtime = out.stat().st_mtime_ns
        r = subprocess.run(cmd, env=c.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "(unchanged)" in r.stdout and out.stat().st_mtime_ns == mtime
        # One partition only.
        r = subprocess.run([*cmd[:-2], "--partition=spares", f"--out={tmp_path / 's.json'}"],
                           env=c.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [g["labels"]["slurm_node"] for g in json.loads((tmp_path / "s.json").read_text())
                ] == ["node5"]
        # A partition Slurm does not have: the last good file stays.
        r = subprocess.run([*cmd, "--partition=nope"], env=c.env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "lists no node in partition nope" in r.stderr
        assert "partitions: gpu, spares" in r.stderr and json.loads(out.read_text()) == groups

        # The shipped Prometheus config, its paths pointed at this test's files.
        shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        [agents] = [s for s in shipped["scrape_configs"] if s["job_name"] == "sentinel-agent"]
        agents["file_sd_configs"][0]["files"] = [str(out)]
        agents["scrape_interval"], agents["scrape_timeout"] = "1s", "1s"
        shipped["rule_files"] = [str(ROOT / "alerts" / "sentinel.rules.yml")]
        with run_prometheus(tmp_path / "prom", extra_config=shipped) as prom:
            up = prom.wait_for('count(up{job="sentinel-agent"} == 1) == 5', timeout=30)
            assert up
            nodes = {r["metric"]["slurm_node"] for r in prom.query('up{job="sentinel-agent"}')}
            assert nodes == set(c.nodes)
            # The agents' own series arrive through the same targets.
            prom.wait_for('sentinel_agent_info{slurm_node="node5",cluster="test"}')


def test_file_sd_keeps_the_last_file_when_slurm_does_not_answer(tmp_path):
    out = tmp_path / "agents.json"
    out.write_text('[{"labels": {"slurm_node": "node1"}, "targets": ["10.0.0.1:9464"]}]\n')
    before = out.read_bytes()
    cfg = tmp_path / "sentinel.yml"
    cfg.write_text("controller:\n  slurm_timeout_seconds: 2\n")
    env = dict(os.environ, SLURM_CONF=str(tmp_path / "missing.conf"))
    r = subprocess.run([*SENTINEL, "deploy", "file-sd", f"--out={out}", f"--config={cfg}"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"{out} left as it was" in r.stderr
    assert out.read_bytes() == before
    r = subprocess.run([*SENTINEL, "deploy", "file-sd", f"--out={out}", "--label", "job=x"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "job is set by sentinel or Prometheus" in r.stderr


# -- the Slurm hooks, run by slurmd --------------------------------------------------------

def test_slurmd_runs_the_hooks_a_failed_burnin_drains_and_refuses_jobs(tmp_path):
    tf_hc, tf_prolog = tmp_path / "tf-healthcheck", tmp_path / "tf-prolog"
    base = {"SENTINEL": " ".join(SENTINEL), "PYTHONPATH": str(ROOT),
            "SLURM_CONF": str(tmp_path / "slurm" / "slurm.conf")}
    # One textfile per node (they share this host); the prolog reads other files than the
    # health check, so the two hooks are tested apart.
    hc = hook(tmp_path, "sentinel-healthcheck",
              {**base, "SENTINEL_TEXTFILE": f"{tf_hc}/$SLURMD_NODENAME/burnin.prom"})
    prolog = hook(tmp_path, "sentinel-prolog",
                  {**base, "SENTINEL_TEXTFILE": f"{tf_prolog}/$SLURMD_NODENAME/burnin.prom"})
    extra = snippet_lines({"HealthCheckProgram": str(hc), "HealthCheckInterval": "4",
                           "Prolog": str(prolog)}, "bf_interval=1,sched_interval=1")
    with run_slurm(tmp_path / "slurm", 4, extra_conf=extra) as c:
        config = c.run("scontrol", "show", "config").stdout
        assert f"HealthCheckProgram      = {hc}" in config
        assert "HealthCheckNodeState    = CYCLE,ANY" in config
        assert f"Prolog                  = {prolog}" in config
        assert "nohold_on_prolog_fail" in config
        # node1 passed, node2 failed, node3 had a person's drain first.
        export(tf_hc / "node1" / "burnin.prom", "pass", "node1")
        c.run("scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=ops: DIMM B2")
        export(tf_hc / "node3" / "burnin.prom", "fail", "node3")
        export(tf_hc / "node2" / "burnin.prom", "fail", "node2")
        s = wait_until(lambda: (st := states(c))["node2"][0] == "drained" and st, 60,
                       "node2 drained by the health check", interval=0.5)
        assert s["node2"][1].startswith("sentinel: burn-in failed: GPU 0 LOW_FLOPS [healthcheck,")
        time.sleep(5)  # more health checks: nothing else changes
        s = states(c)
        assert s["node1"][0] == "idle" and s["node4"][0] == "idle"
        assert s["node3"] == ("drained", "ops: DIMM B2")

        # The Prolog: node4 failed a burn-in since its last health check (only the Prolog
        # reads this file); a requeueable job sent there is refused, requeued, not held.
        export(tf_prolog / "node4" / "burnin.prom", "fail", "node4")
        job = c.sbatch("--requeue", "-w", "node4", "-J", "victim", script="#!/bin/sh\nsleep 60\n")
        s = wait_until(lambda: (st := states(c))["node4"][0] in ("drained", "draining") and st,
                       30, "node4 drained by the prolog", interval=0.5)
        assert s["node4"][1].startswith("sentinel: burn-in failed: GPU 0 LOW_FLOPS")
        wait_until(lambda: c.job_field(job, "RestartCnt") == "1", 30, "the job requeued",
                   interval=0.5)
        assert c.job_field(job, "State") == "PENDING"
        assert "held" not in c.job_field(job, "Reason").lower()
        assert "prolog failed" in (tmp_path / "slurm" / "slurmd-node4.log").read_text()


def test_healthcheck_by_hand_never_touches_a_drained_node_and_reads_bad_files(tmp_path):
    with run_slurm(tmp_path / "slurm", 2) as c:
        tf = tmp_path / "burnin.prom"

        def check(node: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*SENTINEL, "deploy", "healthcheck", f"--textfile={tf}",
                                   f"--node={node}"], env=c.env, capture_output=True,
                                  text=True, timeout=60)

        r = check("node1")
        assert r.returncode == 0 and "no burn-in result" in r.stdout  # never burned in
        export(tf, "fail", "node1")
        r = check("node1")
        assert r.returncode == 1 and "node1: drained: sentinel: burn-in failed" in r.stdout
        reason = states(c)["node1"][1]
        r = check("node1")  # again: already drained, the reason is kept
        assert r.returncode == 1 and "already drained" in r.stdout
        assert states(c)["node1"][1] == reason
        tf.write_text("sentinel_burnin_ok{gpu=\"0\"} one\n")
        r = check("node2")
        assert r.returncode == 2 and "not a Prometheus text exposition" in r.stderr
        assert states(c)["node2"][0] == "idle"
        tf.write_text("node_load1 0.5\n")
        r = check("node2")
        assert r.returncode == 2 and "no sentinel_burnin_ok series" in r.stderr
