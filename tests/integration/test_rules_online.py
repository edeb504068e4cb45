"""OnlineDetector and ``sentinel detect`` online, following jobs through real agents."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from sentinel.config import ConfigError
from sentinel.rules.online import OnlineDetector
from sentinel.rules.rulefile import load_rules, parse_rules
from sentinel.rules.sources import SourceError, StepStream
from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent
from tests.support.services import stop

pytestmark = pytest.mark.integration


def _losses(n: int, spike_at: int | None, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = np.log(2.0 + 6.0 * (1 + t / 100) ** -0.5) + rng.normal(0, 0.015, n)
    if spike_at is not None:
        x[spike_at:spike_at + 3] += 0.6  # a bad batch
    return [float(math.exp(v)) for v in x]


def _report(rep: Reporter, start: int, losses: list[float]) -> None:
    # The kernel's Unix datagram queue is short (net.unix.max_dgram_qlen) and the Reporter
    # drops a step when it is full; on a busy machine the agent falls behind, so a dropped
    # step is sent again: these tests are about following jobs, not about drops.
    for step, loss in enumerate(losses, start=start):
        for _ in range(500):
            dropped = rep.dropped
            rep.step(step, loss=loss, tokens=4096, grad_norm=1.0)
            if rep.dropped == dropped:
                break
            time.sleep(0.01)
        time.sleep(0.001)


def _wait_steps(url: str, job: str, n: int) -> None:
    stream = StepStream(url, job)
    deadline = time.monotonic() + 15
    while len(stream.steps) < n and time.monotonic() < deadline:
        try:
            stream.poll()
        except SourceError:  # 404 until the agent has read the job's first datagram
            pass
        time.sleep(0.05)
    assert len(stream.steps) == n, f"agent {url} has {len(stream.steps)} steps of {job}"


RULES = {"rules": [
    {"name": "loss-spike", "detector": "loss_spike"},
    {"name": "b-only", "detector": "loss_spike", "job": "gpt-b",
     "thresholds": {"min_jump": 0.3}},
    {"name": "diagnosis", "detector": "diagnosis"},
]}


def test_jobs_on_two_agents_are_followed_separately(tmp_path):
    a = _losses(425, 420, seed=1)  # spiked at 420, not recovered yet: firing
    b = _losses(425, None, seed=2)  # healthy
    c = _losses(305, 300, seed=3)  # spiked at 300, on another node's agent
    with run_agent(tmp_path / "n1") as n1, run_agent(tmp_path / "n2") as n2:
        _report(Reporter(job="gpt-a", rank=0, socket_path=n1.socket_path), 0, a)
        _report(Reporter(job="gpt-b", rank=0, socket_path=n1.socket_path), 0, b)
        _report(Reporter(job="gpt-c", rank=0, socket_path=n2.socket_path), 0, c)
        _wait_steps(n1.url, "gpt-a", 425)
        _wait_steps(n1.url, "gpt-b", 425)
        _wait_steps(n2.url, "gpt-c", 305)
        streams = {"gpt-a": StepStream(n1.url, "gpt-a"), "gpt-b": StepStream(n1.url, "gpt-b"),
                   "gpt-c": StepStream(n2.url, "gpt-c"),
                   "gpt-d": StepStream(n1.url, "gpt-d")}  # never reported: its rule fails
        det = OnlineDetector(parse_rules(RULES), streams=streams)
        assert det.active() == ["loss-spike[gpt-a]", "loss-spike[gpt-b]", "loss-spike[gpt-c]",
                                "loss-spike[gpt-d]", "b-only[gpt-b]", "diagnosis"]
        assert det.inactive() == {}

        first = det.cycle()
        assert [(f.rule, f.job, f.step_start, f.state) for f in first] == [
            ("loss-spike", "gpt-a", 420, "firing"), ("loss-spike", "gpt-c", 300, "firing")]
        assert len({f.key for f in first}) == 2
        assert list(det.errors) == ["loss-spike[gpt-d]"]  # the others still ran
        assert "unknown job 'gpt-d'" in det.errors["loss-spike[gpt-d]"]
        assert det.cycle() == []  # same problems: nothing new

        # Job a's spike passes; gpt-c's node goes away. Job a's finding resolves, and
        # gpt-c's is not resolved by the loss-spike runs of the other jobs.
        _report(Reporter(job="gpt-a", rank=0, socket_path=n1.socket_path), 425,
                _losses(480, None, seed=1)[425:])
        _wait_steps(n1.url, "gpt-a", 480)
        stop(n2.proc)
        second = det.cycle()
        assert [(f.job, f.step_start, f.state) for f in second] == [("gpt-a", 420, "resolved")]
        assert second[0].evidence["classification"] == "recoverable_fast"
        assert [(f.job, f.step_start) for f in det.firing()] == [("gpt-c", 300)]
        assert sorted(det.errors) == ["loss-spike[gpt-c]", "loss-spike[gpt-d]"]
        assert "agent http://127.0.0.1" in det.errors["loss-spike[gpt-c]"]


def test_detect_online_follows_a_job_through_the_agent(tmp_path):
    with run_agent(tmp_path) as agent:
        _report(Reporter(job="gpt", rank=0, socket_path=agent.socket_path), 0,
                _losses(425, 420, seed=1))
        _wait_steps(agent.url, "gpt", 425)
        r = subprocess.run([sys.executable, "-m", "sentinel", "detect", "--agent", agent.url,
                            "--job", "gpt", "--once"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    (finding,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (finding["kind"], finding["job"], finding["step_start"]) == ("loss_spike", "gpt", 420)
    # Rules that need Prometheus say so instead of vanishing.
    assert "rule throughput inactive: reads series (tokens_per_sec_cluster, tokens_per_sec) " \
           "and no Prometheus is given" in r.stderr


def test_a_rule_without_its_series_is_refused_at_load():
    with pytest.raises(ConfigError, match="no-series"):
        parse_rules({"rules": [{"name": "no-series", "detector": "gpu_errors"}]})


def test_inactive_rules_say_why():
    rules = load_rules() + parse_rules({"rules": [
        {"name": "c-only", "detector": "loss_spike", "job": "gpt-c"},
    ]})
    det = OnlineDetector(rules)
    why = det.inactive()
    assert why["loss-spike"] == "reads steps and no job's step stream is followed"
    assert why["gpu-errors"].startswith("reads series (xid_new, ")
    assert why["c-only"] == "follows job 'gpt-c', whose step stream is not followed"
    assert det.active() == ["diagnosis"]
    assert det.cycle() == [] and det.errors == {}
