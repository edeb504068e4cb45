"""SIGTERM (Slurm's requeue or scancel) makes each rank tell its agent it stopped on purpose.

Then the agent exports no tokens/s and no report age for the rank: a job moved to other
nodes leaves no "stalled" or "slow" rank behind on the old one.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.agent import run_agent
from tests.support.example_job import read_log, start_job, wait_for_step
from tests.support.metrics import samples, value

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigterm_reports_finish_and_exits_143(tmp_path):
    import requests

    with run_agent(tmp_path / "agent") as agent:
        job = start_job(tmp_path / "run", "--max-steps", "100000",
                        env={"SENTINEL_AGENT_SOCKET": agent.socket_path})
        try:
            wait_for_step(job, tmp_path / "run", 20)

            def metrics() -> dict:
                return samples(requests.get(f"{agent.url}/metrics", timeout=5).text)

            assert value(metrics(), "sentinel_train_tokens_per_second", job="gpt-tiny") > 0
            job.send_signal(signal.SIGTERM)
            assert job.wait(timeout=30) == 143
        finally:
            job.kill()
        time.sleep(0.5)
        after = metrics()
    [term] = [e for e in read_log(tmp_path / "run") if e["event"] == "terminated"]
    assert term["signal"] == signal.SIGTERM and term["step"] >= 20
    assert value(after, "sentinel_train_events_total", job="gpt-tiny", kind="finished") == 1
    names = {n for (n, labels), _ in after.items() if dict(labels).get("job") == "gpt-tiny"}
    assert "sentinel_train_step" in names  # the rank is still shown, at its last step
    assert "sentinel_train_tokens_per_second" not in names
    assert "sentinel_train_seconds_since_last_report" not in names
