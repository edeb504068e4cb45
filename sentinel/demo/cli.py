"""``sentinel demo``: the whole loop on one machine, with no GPU and no cluster, in ~3 minutes.

Exit codes: 0 every episode ended as it should (or was skipped, saying why) and the job
finished; 1 something did not; 2 bad usage, or a part could not start (the message says
what to install).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo", help="show the whole loop here: a real job, three real faults, sentinel acting",
        description="Start a local Slurm cluster (4 nodes and a spare), an agent per node, "
                    "Prometheus and the controller (act mode), train the GPT example on "
                    "it, and let three faults happen: a corrupted shard (rollback and "
                    "skip), an XID on a GPU (spare swap), slow storage (diagnosed, told). "
                    "Ends with a summary and an incident report. Needs root for Slurm and "
                    "the storage rig; without them those parts are shown in observe mode "
                    "or skipped, saying why.")
    p.add_argument("--dir", type=Path, default=None,
                   help="run directory (default: a new /tmp/sentinel-demo-*; kept)")
    p.add_argument("--follow", action="store_true",
                   help="keep everything running after the story, until Ctrl-C")
    p.add_argument("--no-slurm", action="store_true",
                   help="run the ranks as local processes (spare swaps in observe mode)")
    p.add_argument("--no-storage", action="store_true", help="skip the slow-storage episode")
    p.set_defaults(func=run)


def _slack_configured() -> bool:
    """Whether the environment names Slack credentials (then messages are sent for real)."""
    from sentinel.notify.config import load_notify_config

    cfg = load_notify_config(env=dict(os.environ))
    return bool(cfg.token() or cfg.webhook_url())


def run(args: argparse.Namespace) -> int:
    """Run the story and print the summary; with --follow, stay up until Ctrl-C."""
    from sentinel.demo.report import conclude
    from sentinel.demo.scenario import Scenario
    from sentinel.demo.stack import Options
    from sentinel.demo.view import View
    from sentinel.localstack.procs import Unavailable

    root = args.dir or Path(tempfile.mkdtemp(prefix="sentinel-demo-"))
    slack = _slack_configured()
    opts = Options(root=root.resolve(), slack_env=slack, try_slurm=not args.no_slurm,
                   try_storage=not args.no_storage)
    view = View()
    view.plain(f"sentinel demo: run directory {opts.root}")
    # SIGTERM stops the demo like Ctrl-C: everything it started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Scenario(opts, view) as sc:
            try:
                outcome = sc.run()
            except Unavailable as e:
                view.end_status()
                print(f"sentinel demo: cannot run: {e}", file=sys.stderr)
                return 2
            recorded = None if slack else sc.stack.record_dir / "messages.jsonl"
            lines = conclude(sc, outcome, recorded)
            view.end_status()
            view.header("summary")
            for line in lines:
                view.plain(line)
            view.plain("")
            view.plain(f"incident report: {outcome.report}")
            view.plain(f"`sentinel status --config {sc.stack.config_path}` shows the "
                       "controller's view; its journal, the job's logs and every service's "
                       f"log are under {root}")
            if args.follow:
                _follow(sc, view)
    except KeyboardInterrupt:
        view.end_status()
        view.plain("stopped (everything the demo started has been stopped)")
        return 130
    return 0 if outcome.ok else 1


def _follow(sc: Any, view: Any) -> None:
    """Keep the stack up for poking at it; Ctrl-C ends."""
    s = sc.stack
    view.plain("")
    view.plain("--follow: everything keeps running until Ctrl-C:")
    view.plain(f"  Prometheus  {s.prometheus.url}")
    for node, a in s.agents.items():
        view.plain(f"  agent {node}  {a.url}/metrics")
    view.plain(f"  controller  http://{s.controller_url}/metrics")
    if s.slurm is not None:
        view.plain(f"  Slurm       SLURM_CONF={s.slurm.conf} sinfo")
    while True:
        time.sleep(1.0)
