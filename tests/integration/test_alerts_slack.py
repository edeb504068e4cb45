"""End to end: a training process -> agent -> Prometheus rules -> Alertmanager -> Slack.

Real pieces: ``sentinel agent``, a separate process reporting steps through
``sentinel.train.Reporter``, Prometheus (Debian package) evaluating the shipped rules,
Alertmanager with the shipped config and template, and a local HTTP server standing in
for Slack's incoming webhook. The rules run as a copy with every duration divided by
``SPEEDUP`` (generated from alerts/sentinel.rules.yml, see tests/support/alert_rules.py).

The process makes the loss spike and the throughput drop; Slack must receive both
alerts firing with the job's and node's labels, then both resolved.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.support.agent import run_agent
from tests.support.alert_rules import write_compressed_rules
from tests.support.fake_slack import http_server
from tests.support.services import (
    alertmanager_config,
    need_binary,
    run_alertmanager,
    run_prometheus,
    stop,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One real minute of rule time per real second: `for: 5m` becomes 5 s, the 1 h
# throughput baseline 60 s, the 15 min loss median 15 s.
SPEEDUP = 60
JOB = "itest-alerts"

# A training process whose behaviour the test switches through a mode file: the
# reporting goes through the real Reporter and the agent's Unix socket.
TRAINER = r"""
import sys, time
from pathlib import Path
from sentinel.train import Reporter

sock, mode_file, job = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
rep = Reporter(job=job, rank=0, socket_path=sock)
step = 0
while True:
    mode = mode_file.read_text().strip()
    if mode == "stop":
        break
    loss = 30.0 if "spike" in mode else 3.0 + 0.01 * (step % 7)
    rep.step(step, loss=loss, tokens=1000, grad_norm=1.0)
    step += 1
    # normal: 20 steps/s (20k tokens/s); slow: 2 steps/s, a tenth of that.
    time.sleep(0.5 if "slow" in mode else 0.05)
"""


class SlackHook:
    """Record what Alertmanager posts to the Slack webhook."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.posts: list[dict[str, Any]] = []
        server.expect_request("/services/T0/B0/alerts", method="POST").respond_with_handler(
            self._handle
        )

    def _handle(self, req: Request) -> Response:
        self.posts.append(json.loads(req.get_data()))
        return Response("ok", status=200)

    def attachments(self) -> list[dict[str, Any]]:
        return [a for p in self.posts for a in p.get("attachments", [])]

    def find(self, status: str, alertname: str) -> dict[str, Any] | None:
        for a in self.attachments():
            if a["title"].startswith(f"[{status}") and f"] {alertname} " in a["title"] + " ":
                return a
        return None


@pytest.fixture
def slack_hook() -> Iterator[SlackHook]:
    with http_server() as server:
        yield SlackHook(server)


def _wait(pred: Any, timeout: float, what: str, hook: SlackHook) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    titles = [a["title"] for a in hook.attachments()]
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; Slack got {titles}")


def test_loss_spike_and_throughput_drop_reach_slack_then_resolve(
    tmp_path: Path, slack_hook: SlackHook
) -> None:
    need_binary("prometheus", "prometheus")
    need_binary("prometheus-alertmanager", "prometheus-alertmanager")
    rules = write_compressed_rules(tmp_path / "fast.rules.yml", SPEEDUP, minimum_s=3)
    agent_cfg = tmp_path / "agent.yml"
    # A 2 s tokens/sec window, so the drop shows within two scrapes.
    agent_cfg.write_text(yaml.safe_dump({"agent": {"rate_window_seconds": 2}}))
    am_cfg = alertmanager_config(tmp_path, slack_hook.server.url_for("/services/T0/B0/alerts"))
    mode = tmp_path / "mode"
    mode.write_text("normal")

    with (
        run_agent(tmp_path / "agent", ["--config", str(agent_cfg), "--no-collector.gpu",
                                       "--no-collector.disk", "--no-collector.host"]) as agent,
        run_alertmanager(tmp_path / "am", am_cfg) as am,
    ):
        scrape = {"scrape_configs": [{
            "job_name": "sentinel-agent", "honor_labels": True,
            "static_configs": [{"targets": [agent.hostport]}],
        }]}
        trainer = subprocess.Popen(
            [sys.executable, "-c", TRAINER, agent.socket_path, str(mode), JOB],
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            with run_prometheus(tmp_path / "prom", rule_files=[str(rules)],
                                alertmanager=am.hostport, extra_config=scrape) as prom:
                prom.wait_for(f'job:sentinel_train_tokens_per_second:sum{{job="{JOB}"}} > 10000',
                              timeout=20)
                time.sleep(12)  # a baseline: 12 s is 12 minutes of rule time
                assert slack_hook.attachments() == [], "an alert fired on the normal run"

                mode.write_text("slow spike")
                time.sleep(3)
                mode.write_text("slow")
                spike = _wait(lambda: slack_hook.find("FIRING", "SentinelLossSpike"), 15,
                              "the loss spike to fire", slack_hook)
                drop = _wait(lambda: slack_hook.find("FIRING", "SentinelThroughputDrop"), 20,
                             "the throughput drop to fire", slack_hook)

                mode.write_text("normal")
                _wait(lambda: slack_hook.find("RESOLVED", "SentinelLossSpike"), 20,
                      "the loss spike to resolve", slack_hook)
                resolved = _wait(lambda: slack_hook.find("RESOLVED", "SentinelThroughputDrop"),
                                 20, "the throughput drop to resolve", slack_hook)
                hostname = prom.query(f'sentinel_train_step{{job="{JOB}"}}')[0]["metric"][
                    "hostname"]
        finally:
            mode.write_text("stop")
            try:
                trainer.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stop(trainer)

    assert hostname == socket.gethostname() or hostname
    # The firing messages name the alert, the job and the node, show the value and
    # link the runbook.
    assert spike["title"] == f"[FIRING:1] SentinelLossSpike job={JOB} node={hostname}"
    assert f"• job: `{JOB}` rank `0`" in spike["text"]
    assert f"• node: `{hostname}`" in spike["text"]
    assert "• value: loss=30" in spike["text"]
    assert "docs/runbooks/training.md#sentinellossspike" in spike["text"]
    assert spike["color"] == "warning"
    assert drop["title"] == f"[FIRING:1] SentinelThroughputDrop job={JOB}"
    assert "tokens/s" in drop["text"] and "Look first at tokens/sec per node" in drop["text"]
    assert resolved["color"] == "good" and "RESOLVED" in resolved["text"]
    # Every post went to the configured channel.
    assert {p["channel"] for p in slack_hook.posts} == {"#training-alerts"}
