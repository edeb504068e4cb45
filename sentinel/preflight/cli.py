"""``sentinel preflight``: the playbook's pre-flight checklist, automated, in one report.

Checks, in order: config (every section loads), burnin (every GPU: here, or the
``preflight.burnin_nodes`` through Slurm), checkpoint (save -> verify -> resume with
CheckpointStore in the job's checkpoint directory, and the job's newest checkpoint
verifies), storage (room for the planned checkpoints), requeue (a test job in the job's
partition runs, is requeued and runs again), prometheus (every agent target up, the job
label kept), reporter (a Reporter datagram reaches the local agent and comes back),
spare (a ready spare, as the controller defines it).

Each is ok, a problem, or skipped with the reason (no GPU, no Slurm configured, not
selected). Exit 0 when nothing is a problem, 1 when something is, 2 for bad usage or a
config that does not load.

  sentinel preflight --config /etc/sentinel/sentinel.yml --job gpt-7b
  sentinel preflight --only burnin,checkpoint --checkpoint-dir /scratch/ckpt --json
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import Any

from sentinel.config import ConfigError
from sentinel.preflight import config as _sections  # noqa: F401 - declares preflight:

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Return bytes of ``80G``, ``512MiB``, ``1.5T`` or a plain number (powers of 1024)."""
    m = SIZE.match(text)
    if not m:
        raise ConfigError(f"--checkpoint-bytes: {text!r} is not a size (valid: e.g. 80G, "
                          "512MiB, 1.5T or a number of bytes)")
    power = " KMGTP".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 ** power))


def register(subparsers: Any) -> None:
    """Add the ``preflight`` subcommand."""
    from sentinel.preflight.config import CHECK_NAMES

    p = subparsers.add_parser("preflight", help="run the pre-flight checklist of a training "
                              "job (burn-in, checkpoints, requeue, metrics, spare, config)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ",".join(CHECK_NAMES)
    p.add_argument("--config", help="YAML config (every section is checked; jobs:, "
                   "controller:, agent: and preflight: are read)")
    p.add_argument("--job", help="the jobs[] entry to check (default: the only one)")
    p.add_argument("--only", help=f"run only these checks (comma-separated: {names})")
    p.add_argument("--skip", help="skip these checks (comma-separated)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the evidence of every check, not only of problems")
    p.add_argument("--checkpoint-dir", help="the job's checkpoint directory")
    p.add_argument("--checkpoint-bytes", help="planned size of one checkpoint (e.g. 80G)")
    p.add_argument("--keep", type=int, help="checkpoints the job keeps (default 3)")
    p.add_argument("--partition", help="the job's Slurm partition (for the requeue test)")
    p.add_argument("--burnin-nodes", help="burn in these Slurm nodes (a hostlist) instead "
                   "of this host")
    p.add_argument("--burnin-args", help="extra arguments of `sentinel burnin`, e.g. "
                   "'--duration 10'")
    p.add_argument("--prometheus-url", help="Prometheus that scrapes the agents")
    p.add_argument("--agent-socket", help="the local agent's report socket")
    p.add_argument("--agent-url", help="the local agent's HTTP address")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "job": args.job, "checkpoint_dir": args.checkpoint_dir,
        "checkpoint_bytes": parse_size(args.checkpoint_bytes) if args.checkpoint_bytes
        else None,
        "checkpoint_keep": args.keep, "partition": args.partition,
        "burnin_nodes": args.burnin_nodes,
        "burnin_args": shlex.split(args.burnin_args) if args.burnin_args else None,
        "prometheus_url": args.prometheus_url, "agent_socket": args.agent_socket,
        "agent_url": args.agent_url,
    }


def run(args: argparse.Namespace) -> int:
    """Run the checks and print the report; return its exit code."""
    from sentinel.preflight.checks.base import Context
    from sentinel.preflight.config import load_setup
    from sentinel.preflight.report import render
    from sentinel.preflight.runner import parse_names, run_checks, slurm_of

    only = parse_names(args.only, "--only")
    skip = parse_names(args.skip, "--skip")
    setup = load_setup(args.config, _overrides(args))
    ctx = Context(setup=setup)
    if setup.valid and not all(n in skip for n in ("burnin", "requeue", "spare")):
        ctx.slurm, ctx.no_slurm = slurm_of(setup)
    report = run_checks(ctx, only, skip)
    if args.json:
        print(report.to_json())
    else:
        sys.stdout.write(render(report, verbose=args.verbose))
    return report.exit_code
