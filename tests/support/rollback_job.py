"""A minimal training job with a rollback handler, run as a process by the tests.

``python tests/support/rollback_job.py RUN_DIR JOB POLL_S SECONDS``: saves checkpoints 0
and 10 (state ``{"w": step}``), installs the handler polling every POLL_S seconds, then
steps every 20 ms for SECONDS, calling ``at_step_boundary``. Prints ``ready`` once the
handler is installed and one JSON line per rollback applied; exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.rollback import RollbackHandler
from sentinel.train.skipplan import SkipPlan


def main() -> int:
    """Run the job; see the module docstring."""
    run_dir, job, poll_s, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), \
        float(sys.argv[4])
    store = CheckpointStore(run_dir / "checkpoints", keep=5)
    for s in (0, 10):
        store.save(s, {"w": torch.full((4,), float(s))})
    restored: list[float] = []
    handler = RollbackHandler(run_dir, job, store, SkipPlan(run_dir),
                              lambda state: restored.append(float(state["w"][0])),
                              poll_interval_s=poll_s)
    handler.install()
    print("ready", flush=True)
    step = 12
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            out = handler.at_step_boundary(step)
            if out is not None:
                print(json.dumps({"from": out.from_step, "to": out.to_step,
                                  "restored": restored[-1]}), flush=True)
                step = out.to_step
            step += 1
            time.sleep(0.02)
    finally:
        handler.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
