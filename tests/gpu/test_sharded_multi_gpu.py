"""Two GPUs, two ranks over NCCL: an FSDP2 model's asynchronous sharded checkpoints.

The job (tests/support/sharded_job.py) shards a 100M-parameter model between the ranks
with ``fully_shard``, snapshots each rank's shards every EVERY steps while training
(``AsyncCheckpointer(sharded=True, overlap=True)``: pinned host buffers, a side-stream
copy, shards written by background threads agreeing over their own gloo group), then
rolls back once from RAM and once from disk. Both ranks must resume at the same step
with their state bit-identical to the save, each with its own RNG, and replay the same
losses. Prints the timings as JSON (and writes ``$SENTINEL_GPU_OUT/sharded_checkpoints.json``)
for docs/BENCHMARKS.md. Run on the 2-GPU machine:
``python3 -m pytest -q -m gpu tests/gpu/test_sharded_multi_gpu.py -s`` (about a minute).
The same job runs on two CPU ranks in tests/unit/train/test_sharded_async.py.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import free_port
from tests.support.sharded_job import check, run_ranks

torch = pytest.importorskip("torch")

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.multigpu,
    pytest.mark.skipif(N_GPUS < 2, reason=f"needs 2 GPUs (two NCCL ranks); this machine has "
                                          f"{N_GPUS}"),
]
EVERY = 20  # a save every 20 steps of 0.1 s: 2 s for the background write of ~0.6 GB
LAYERS, WIDTH = 6, 4096  # 6 x 4096^2 + bias: 100.7M parameters, 1.2 GB with AdamW's state


def _summary(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the figures for docs/BENCHMARKS.md: medians per rank, each rollback."""
    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 4)

    ranks = {}
    for o in outs:
        saves = o["saves"][1:]  # the first allocates the pinned buffers
        ranks[f"rank{o['rank']}"] = {
            "state_bytes": o["saves"][0]["nbytes"],
            "saves": len(o["saves"]),
            "save_blocked_s_median": med([s["blocked_s"] for s in saves]),
            "save_blocked_s_max": round(max(s["blocked_s"] for s in saves), 4),
            "save_waited_for_disk_s_median": med([s["waited_s"] for s in saves]),
            "first_save_blocked_s": round(o["saves"][0]["blocked_s"], 4),
            "background_write_s_median": med([w["write_s"] for w in o["writes"]]),
            "rollbacks": [{k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in r.items() if k != "diff"} for r in o["rollbacks"]],
        }
    return {"model": f"{LAYERS} x Linear({WIDTH}) FSDP2 fully_shard, AdamW",
            "parameters": outs[0]["params"], "ranks": 2, "save_every_steps": EVERY,
            "step_seconds": 0.1, "per_rank": ranks}


def test_fsdp2_on_two_gpus_saves_sharded_in_the_background_and_rolls_back(tmp_path):
    outs = run_ranks(tmp_path / "run", "cuda", free_port(), "--every", str(EVERY),
                     "--layers", str(LAYERS), "--width", str(WIDTH), "--batch", "32",
                     "--min-step-seconds", "0.1", timeout=170)
    summary = _summary(outs)
    print("\nsharded checkpoints on 2 GPUs:", json.dumps(summary, indent=1))
    out = os.environ.get("SENTINEL_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "sharded_checkpoints.json").write_text(json.dumps(summary, indent=1))
    assert sorted(o["device"] for o in outs) == ["cuda:0", "cuda:1"]
    # GPU matmuls and NCCL reductions may differ in the last bit from run to run; the
    # restored state itself is compared bit for bit.
    check(outs, EVERY, exact_losses=False)
    for o in outs:
        ram, disk = o["rollbacks"]
        assert ram["read_s"] < disk["read_s"], o["rollbacks"]  # RAM: no read, no hash
