"""``sentinel rollback``: ask a running job to roll back in-process and skip batches."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# How often --wait looks for the job's answer; the job answers within a step.
RESULT_POLL_S = 0.1


@dataclass
class RollbackConfig:
    """Config section ``rollback:`` (used by ``sentinel rollback``)."""

    wait_s: float = field(
        default=120.0,
        metadata={
            "help": "seconds to wait for the job's answer (0: do not wait). Two minutes "
            "covers a slow step plus reading a large checkpoint.",
            "min": 0.0,
        },
    )
    checkpoint_subdir: str = field(
        default="checkpoints",
        metadata={"help": "checkpoint directory inside the run directory"},
    )


def register(subparsers: Any) -> None:
    """Add the ``rollback`` subcommand."""
    p = subparsers.add_parser(
        "rollback",
        help="roll a running job back to a verified checkpoint and skip batch ranges",
        description=(
            "Write a signed rollback request into the job's run directory and signal the "
            "job (SIGUSR1); it reloads the checkpoint at its next step boundary, in-process. "
            "Exit 0 when the job reports it done, 1 if refused or no answer, 2 bad usage."
        ),
    )
    p.add_argument("--job", required=True, help="job name, as the job's Reporter knows it")
    p.add_argument("--run-dir", required=True, type=Path, help="the job's run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--to-step", type=int, help="checkpoint step to roll back to")
    which.add_argument(
        "--before-step", type=int,
        help="roll back to the newest checkpoint that verifies with step <= this one",
    )
    p.add_argument(
        "--skip", action="append", default=[], metavar="A:B",
        help="global batch range to skip, half-open (A..B-1); repeatable",
    )
    p.add_argument("--pid", type=int, action="append", default=None,
                   help="signal this PID (default: the PIDs the job recorded); repeatable")
    p.add_argument("--no-signal", action="store_true",
                   help="only write the request (the job finds it within its poll interval)")
    p.add_argument("--reason", default="", help="why (kept in the skip plan's history)")
    p.add_argument("--requested-by", default=None, help="who asks (default: $USER)")
    p.add_argument("--wait", type=float, default=None, dest="wait_s",
                   help="seconds to wait for the job's answer (0: do not wait; default 120)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="the job's checkpoint directory (default RUN_DIR/checkpoints)")
    p.add_argument("--config", type=Path, default=None, help="sentinel YAML config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Submit the request, signal the job, wait for its answer."""
    from sentinel.config import load_section, read_yaml_file
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore
    from sentinel.train.rollback import (
        ROLLBACK_SIGNAL,
        RollbackError,
        RollbackRequest,
        job_pids,
        read_result,
        read_token,
        write_request,
    )
    from sentinel.train.skipplan import SkipPlan, SkipPlanError, parse_range

    file_data = read_yaml_file(args.config) if args.config else None
    cfg = load_section(RollbackConfig, "rollback", file_data=file_data,
                       overrides={"wait_s": args.wait_s})
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        print(f"sentinel rollback: run directory {run_dir} does not exist", file=sys.stderr)
        return 2
    try:
        skip = [parse_range(s) for s in args.skip]
        SkipPlan(run_dir).check(skip)
    except SkipPlanError as e:
        print(f"sentinel rollback: {e}", file=sys.stderr)
        return 2
    try:
        token = read_token(run_dir)
    except RollbackError as e:
        print(f"sentinel rollback: {e}", file=sys.stderr)
        return 1

    store = CheckpointStore(args.checkpoint_dir or run_dir / cfg.checkpoint_subdir, writer=False)
    try:
        if args.to_step is not None:
            to_step = int(args.to_step)
            store.read_verified(to_step)  # refuse early with the reason; the job checks again
        else:
            found = store.latest_verified(before_step=args.before_step)
            if found is None:
                steps = ", ".join(str(c.step) for c in store.checkpoints()) or "none"
                print(f"sentinel rollback: no verified checkpoint at or before step "
                      f"{args.before_step} in {store.dir} (checkpoints: {steps})", file=sys.stderr)
                return 1
            to_step = found.step
    except CheckpointError as e:
        print(f"sentinel rollback: {e}", file=sys.stderr)
        return 1

    req = RollbackRequest(
        id=uuid.uuid4().hex, job=args.job, to_step=to_step, skip=skip,
        requested_by=args.requested_by or os.environ.get("USER", "") or "sentinel rollback",
        reason=args.reason, created=time.time(),
    )
    path = write_request(run_dir, req, token)
    log.info("wrote rollback request %s (to step %d, skip %s)", path, to_step, args.skip)

    if not args.no_signal:
        pids = args.pid or job_pids(run_dir)
        if not pids:
            print(f"sentinel rollback: request written to {path}, but no job PID is recorded "
                  f"in {run_dir}; pass --pid or --no-signal", file=sys.stderr)
            return 1
        for pid in pids:
            try:
                os.kill(pid, ROLLBACK_SIGNAL)
            except ProcessLookupError:
                log.warning("job PID %d is not running", pid)
            except PermissionError:
                print(f"sentinel rollback: not allowed to signal PID {pid}", file=sys.stderr)
                return 1

    if cfg.wait_s <= 0:
        print(json.dumps({"id": req.id, "status": "submitted", "to_step": to_step}))
        return 0
    deadline = time.monotonic() + cfg.wait_s
    while time.monotonic() < deadline:
        result = read_result(run_dir, req.id)
        if result is not None:
            print(json.dumps(result, sort_keys=True))
            return 0 if result.get("status") == "done" else 1
        time.sleep(RESULT_POLL_S)
    print(f"sentinel rollback: no answer from the job within {cfg.wait_s:g} s "
          f"(request {path} is still pending)", file=sys.stderr)
    return 1
