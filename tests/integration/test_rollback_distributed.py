"""Two CPU ranks (gloo) roll back together at the same step boundary; nobody hangs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.example_job import (
    EXAMPLE,
    ROOT,
    read_log,
    rollback_cli,
    wait_for_step,
)
from tests.support.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 140


def test_both_ranks_roll_back_at_the_same_boundary(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--run-dir", str(run_dir), "--config", "tiny",
             "--threads", "1", "--max-steps", str(STEPS), "--checkpoint-every", "25",
             "--eval-every", "1000", "--inject-bad-batch", "60,61",
             "--min-step-seconds", "0.03", "--device", "cpu"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    try:
        wait_for_step(procs[1], run_dir, 64, rank=1)
        # Signal only rank 1: the agreement step must still bring rank 0 (which reads the
        # request) and rank 1 to the same decision at the same boundary.
        cli = rollback_cli(run_dir, "--before-step", "60", "--skip", "60:62",
                           "--pid", str(procs[1].pid))
        assert cli.returncode == 0, cli.stderr
        for p in procs:
            out, _ = p.communicate(timeout=120)  # a hang would end here
            assert p.returncode == 0, out
    finally:
        for p in procs:
            p.kill()
    logs = [read_log(run_dir, r) for r in range(2)]
    rollbacks = [[(e["from_step"], e["to_step"]) for e in log if e["event"] == "rollback"]
                 for log in logs]
    assert rollbacks[0] == rollbacks[1] and len(rollbacks[0]) == 1
    assert rollbacks[0][0][1] == 50 and rollbacks[0][0][0] > 61
    for log in logs:
        rb = next(i for i, e in enumerate(log) if e["event"] == "rollback")
        after = log[rb + 1 :]
        assert [e["batch"] for e in after if e["event"] == "skip"] == [60, 61]
        assert [(e["step"], e["batch"]) for e in after if e["event"] == "step"] == [
            (s, s if s < 60 else s + 2) for s in range(50, STEPS)]
    # DDP keeps the ranks' losses on the same model; each rank saw its half of the batch.
    last = [[e for e in log if e["event"] == "step"][-1] for log in logs]
    assert last[0]["step"] == last[1]["step"] == STEPS - 1


def test_a_restore_that_fails_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's restore raises after the vote: both ranks stop; neither waits for ever."""
    worker = Path(__file__).with_name("rollback_restore_fails_worker.py")
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=ROOT))
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]  # a hang would end here
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [3, 3], outs
    assert "restoring the checkpoint failed: RuntimeError" in outs[1]
    assert "another rank failed to restore" in outs[0]
    pending = list((tmp_path / "rollback" / "requests").glob("*.json"))
    assert len(pending) == 1  # kept for the restarted job
