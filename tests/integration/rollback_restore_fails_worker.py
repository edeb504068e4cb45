"""One gloo rank of the failed-restore test: rank 1's restore raises mid-rollback.

Run by tests/integration/test_rollback_distributed.py, never on its own. Exit code 3
means this rank stopped with the RollbackError the handler raises on every rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.request import RollbackError, submit
from sentinel.train.rollback import RollbackHandler
from sentinel.train.skipplan import SkipPlan


def main() -> int:
    run_dir = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    rank = dist.get_rank()
    store = CheckpointStore(run_dir / "checkpoints", keep=5, writer=rank == 0)
    if rank == 0:
        for s in (0, 10, 20):
            store.save(s, {"w": torch.full((4,), float(s))})
    dist.barrier()

    def restore(state: dict) -> None:
        if rank == 1:
            raise RuntimeError("size mismatch for w")

    handler = RollbackHandler(run_dir, "job-d", store, SkipPlan(run_dir), restore,
                              poll_interval_s=0.0)
    handler.install()
    dist.barrier()
    if rank == 0:
        submit(run_dir, "job-d", 10, [(25, 30)], request_id=os.urandom(8).hex(),
               requested_by="test", reason="spike", signal=False)
    dist.barrier()
    try:
        for step in range(22, 30):
            handler.at_step_boundary(step)
            t = torch.ones(1)
            dist.all_reduce(t)  # the training step's collective: a hang would be here
    except RollbackError as e:
        print(f"rank {rank}: {e}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
