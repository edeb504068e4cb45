"""``sentinel demo`` serves the agent with a synthetic job reporting through the Reporter."""

from __future__ import annotations

import subprocess
import sys
import time

import requests

from tests.support.services import free_port, stop


def test_demo_serves_training_metrics_and_steps():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "demo", f"--listen-address=127.0.0.1:{port}",
         "--seconds=20", "--step-seconds=0.03"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        text = ""
        while time.monotonic() < deadline:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if 'sentinel_train_step{hostname=' in text and "demo-gpt" in text:
                    steps = requests.get(f"http://127.0.0.1:{port}/api/v1/steps",
                                         params={"job": "demo-gpt", "since": 0}, timeout=2)
                    if steps.json()["steps"]:
                        break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        assert 'job="demo-gpt"' in text
        assert "sentinel_gpu_up{" in text  # real or replayed GPU series
        assert {s["rank"] for s in steps.json()["steps"]} <= {0, 1, 2, 3}
        # The bad batch at step 120 reaches the detector through the step stream.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = requests.get(f"http://127.0.0.1:{port}/api/v1/steps",
                               params={"job": "demo-gpt", "since": 125}, timeout=2).json()
            if got["steps"]:
                break
            time.sleep(0.2)
        time.sleep(2.5)  # one detection cycle after the spike's steps arrived
    finally:
        stop(proc)
    out = proc.stdout.read()
    assert f"http://127.0.0.1:{port}/metrics" in out and "agent.sock" in out
    assert "finding: loss spike" in out and "steps 120-122" in out, out
