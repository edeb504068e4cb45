"""Two GPUs, two ranks over NCCL: per-rank signals to a real agent, and one rollback agreed.

What one GPU cannot show: each rank reports its own GPU (the agent joins rank -> GPU
UUID, and both GPUs are busy in NVML's view), and a rollback request signalled to rank 1
only is agreed over NCCL so both ranks roll back at the same boundary and skip the same
batches. Run on the 2-GPU machine: ``python -m pytest -m gpu tests/gpu -v``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.agent import run_agent
from tests.support.example_job import EXAMPLE, ROOT, read_log, wait_for_step
from tests.support.metrics import samples
from tests.support.services import free_port

torch = pytest.importorskip("torch")

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(N_GPUS < 2, reason=f"needs 2 GPUs; this machine has {N_GPUS}"),
]
STEPS = 400  # ~20 s at 0.05 s a step: the agent is scraped while it runs
JOB = "gpt-2gpu"


def _start_ranks(run_dir: Path, sock: str) -> list[subprocess.Popen[str]]:
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "SENTINEL_AGENT_SOCKET": sock, "NCCL_NVLS_ENABLE": "0"}
        procs.append(subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--run-dir", str(run_dir), "--config", "small",
             "--device", "cuda", "--job", JOB, "--max-steps", str(STEPS),
             "--checkpoint-every", "25", "--keep", "10", "--eval-every", "100000",
             "--inject-bad-batch", "60,61", "--min-step-seconds", "0.05", "--threads", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    return procs


def _scrape_ranks(url: str, deadline: float) -> tuple[dict[str, str], dict[str, float]]:
    """Return {rank: GPU UUID} from the agent once both ranks are joined, and GPU utils."""
    while True:
        m = samples(requests.get(f"{url}/metrics", timeout=10).text)
        ranks = {dict(ls)["rank"]: dict(ls)["UUID"] for (n, ls), v in m.items()
                 if n == "sentinel_train_rank_info" and dict(ls).get("job") == JOB}
        util = {dict(ls)["UUID"]: v for (n, ls), v in m.items()
                if n == "sentinel_gpu_utilization_ratio"}
        if len(ranks) == 2 and all(ranks.values()) or time.monotonic() > deadline:
            return ranks, util
        time.sleep(1)


def test_two_ranks_on_two_gpus_report_their_gpu_and_roll_back_together(tmp_path):
    from sentinel.train.request import submit, wait_result

    run_dir = tmp_path / "run"
    with run_agent(tmp_path / "agent") as agent:
        procs = _start_ranks(run_dir, agent.socket_path)
        try:
            wait_for_step(procs[1], run_dir, 64, rank=1, timeout=300)
            # Signal rank 1 only: the vote over NCCL must bring rank 0 along.
            sub = submit(run_dir, JOB, 50, [(60, 62)], request_id=uuid.uuid4().hex,
                         requested_by="gpu test", reason="spike", pids=[procs[1].pid])
            assert sub.signalled == [procs[1].pid]
            result = wait_result(run_dir, sub.request.id, 120)
            assert result["status"] == "done", result
            # While the job runs on: what the agent says about each rank and each GPU.
            ranks, util = _scrape_ranks(agent.url, time.monotonic() + 30)
            outs = [p.communicate(timeout=300)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    # Per-rank signals: each rank on its own GPU, both GPUs known to NVML and busy.
    assert set(ranks) == {"0", "1"} and len(set(ranks.values())) == 2, ranks
    assert set(ranks.values()) <= set(util), (ranks, util)
    logs = [read_log(run_dir, r) for r in range(2)]
    starts = [next(e for e in log if e["event"] == "start") for log in logs]
    assert sorted(s["device"] for s in starts) == ["cuda:0", "cuda:1"], starts
    rollbacks = [[(e["from_step"], e["to_step"]) for e in log if e["event"] == "rollback"]
                 for log in logs]
    assert rollbacks[0] == rollbacks[1] and len(rollbacks[0]) == 1, rollbacks
    assert rollbacks[0][0][1] == 50 and rollbacks[0][0][0] > 61
    for log in logs:
        rb = next(i for i, e in enumerate(log) if e["event"] == "rollback")
        after = log[rb + 1:]
        assert [e["batch"] for e in after if e["event"] == "skip"] == [60, 61]
        assert [(e["step"], e["batch"]) for e in after if e["event"] == "step"] == [
            (s, s if s < 60 else s + 2) for s in range(50, STEPS)]
        assert all(e["loss"] == e["loss"] for e in after if e["event"] == "step")
    # DDP: the ranks end on the same step with the same model.
    last = [[e for e in log if e["event"] == "step"][-1] for log in logs]
    assert last[0]["step"] == last[1]["step"] == STEPS - 1
    out = os.environ.get("SENTINEL_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        rb0 = next(e for e in logs[0] if e["event"] == "rollback")
        Path(out, "multi_gpu_rollback.txt").write_text(
            f"ranks->GPU {ranks}\nutil {util}\nrollback {rollbacks[0]} "
            f"{ {k: v for k, v in rb0.items() if k != 'event'} }\n")
