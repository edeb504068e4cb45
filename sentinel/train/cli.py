"""``sentinel rollback``: ask a running job to roll back in-process and skip batches."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.config import config_section


@config_section("rollback")
@dataclass
class RollbackConfig:
    """Config section ``rollback:`` (used by ``sentinel rollback``)."""

    wait_s: float = field(
        default=120.0,
        metadata={
            "help": "seconds to wait for the job's answer (0: do not wait). Two minutes "
            "covers a slow step plus reading a large checkpoint.",
            "min": 0.0,
            "max": 86400.0,
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
            "A job that cannot be signalled finds the request by polling. Exit 0 when the "
            "job reports it done, 1 if refused or no answer yet, 2 bad usage. Repeating the "
            "command with the same --request-id never rolls back twice."
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
    p.add_argument("--request-id", default=None,
                   help="name of the request (default: a new random id); the same id again "
                   "reports that request's outcome instead of asking a second time")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="the job's checkpoint directory (default RUN_DIR/checkpoints)")
    p.add_argument("--config", type=Path, default=None, help="sentinel YAML config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Submit the request, signal the job, wait for its answer."""
    from sentinel.config import load_section, read_yaml_file
    from sentinel.train.request import RollbackError, read_token
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
        # The token first: without it nothing else is worth checking.
        token = read_token(run_dir)
        return _submit_and_wait(args, cfg, skip, token)
    except RollbackError as e:
        print(f"sentinel rollback: {e}", file=sys.stderr)
        return 1


def _submit_and_wait(args: argparse.Namespace, cfg: RollbackConfig,
                     skip: list[tuple[int, int]], token: bytes) -> int:
    """Choose the checkpoint, submit, and print the job's answer; RollbackError on failure."""
    from sentinel.train.request import check_id, choose_target, submit, wait_result

    run_dir: Path = args.run_dir
    request_id = args.request_id or uuid.uuid4().hex
    check_id(request_id)
    to_step = choose_target(args.checkpoint_dir or run_dir / cfg.checkpoint_subdir,
                            to_step=args.to_step, before_step=args.before_step)
    sub = submit(
        run_dir, args.job, to_step, skip, request_id=request_id,
        requested_by=args.requested_by or os.environ.get("USER", "") or "sentinel rollback",
        reason=args.reason, signal=not args.no_signal, pids=args.pid, token=token,
    )
    if sub.unsignalled:
        print(f"sentinel rollback: {sub.unsignalled}; the job's rank 0 finds the request "
              "when it next polls (every 10 s by default)", file=sys.stderr)
    if cfg.wait_s <= 0:
        print(json.dumps({"id": sub.request.id, "status": sub.status,
                          "to_step": sub.request.to_step}))
        return 0
    result = wait_result(run_dir, sub.request.id, cfg.wait_s)
    if result is None:
        again = " ".join(["sentinel rollback", *_quoted_argv(args, request_id)])
        print(f"sentinel rollback: no answer from the job within {cfg.wait_s:g} s; request "
              f"{sub.request.id} is still pending ({sub.path}) and the job applies it when it "
              "next polls or restarts. Do not submit a new one (that would roll back twice); "
              f"to wait for this one: {again}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("status") == "done" else 1


def _quoted_argv(args: argparse.Namespace, request_id: str) -> list[str]:
    """Return the arguments that ask again for the same request, and wait longer."""
    import shlex

    out = ["--job", args.job, "--run-dir", str(args.run_dir)]
    out += (["--to-step", str(args.to_step)] if args.to_step is not None
            else ["--before-step", str(args.before_step)])
    for r in args.skip:
        out += ["--skip", r]
    if args.checkpoint_dir is not None:
        out += ["--checkpoint-dir", str(args.checkpoint_dir)]
    out += ["--request-id", request_id, "--wait", "600"]
    return [shlex.quote(a) for a in out]
