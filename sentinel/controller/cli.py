"""``sentinel controller``: run | once | replay FILE | approve ID | reset-breaker | journal.

- ``run``: the daemon (systemd unit deploy/systemd/sentinel-controller.service).
- ``once``: one cycle; the actions it starts run to their end; exit 1 if anything was found.
- ``replay FILE``: what the policy would have decided about recorded findings, and the
  estimated cost; acts on nothing.
- ``approve ID``: approve an action waiting in ``ask`` mode (ID or a unique prefix).
- ``reset-breaker``: close the circuit breaker; paused actions resume.
- ``journal``: print incidents, actions, steps and events (``--findings``: the recorded
  findings, the input of ``replay``).

Approvals and resets go through the journal file, which only root and the ``sentinel``
group can write (mode 0660); nothing else listens for them.

Exit codes: 0 ok / nothing found, 1 found something or refused, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from sentinel.config import ConfigError, read_yaml_file
from sentinel.controller import config as _sections  # noqa: F401 - declares its sections

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FOUND, EXIT_BAD = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``controller`` subcommand and its commands."""
    p = subparsers.add_parser("controller", help="turn findings into actions under a policy",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="controller_command", metavar="COMMAND", required=True)
    for name, func, helptext in (
            ("run", _cmd_run, "run the controller daemon"),
            ("once", _cmd_once, "run one cycle and wait for the actions it starts"),
            ("approve", _cmd_approve, "approve an action waiting in ask mode"),
            ("reset-breaker", _cmd_reset, "close the circuit breaker"),
            ("journal", _cmd_journal, "print the journal"),
            ("replay", _cmd_replay, "replay recorded findings through the policy")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--config", help="YAML config file (sections controller:, policy:, "
                       "jobs:, notify:)")
        c.set_defaults(func=func)
        if name == "approve":
            c.add_argument("action_id", help="action id (or a unique prefix)")
        if name == "reset-breaker":
            c.add_argument("--reason", default="", help="why (kept in the journal)")
        if name == "journal":
            c.add_argument("--incident", help="only this incident")
            c.add_argument("--findings", action="store_true",
                           help="print the recorded findings (replay input) as JSON lines")
            c.add_argument("--json", action="store_true", help="JSON instead of text")
            c.add_argument("--limit", type=int, default=50, help="incidents to show")
        if name == "replay":
            c.add_argument("file", help="findings JSONL (sentinel detect output or "
                           "`journal --findings`)")
            c.add_argument("--spares", type=int, default=-1,
                           help="ready spares to assume when a record does not say")
            c.add_argument("--nodes", type=int, default=0,
                           help="nodes in the cluster to assume when a record does not say")
            c.add_argument("--node-in-job", action=argparse.BooleanOptionalAction,
                           default=True, help="assume a finding's node runs the job")
            c.add_argument("--json", action="store_true", help="JSON lines instead of text")


def _file_data(args: argparse.Namespace) -> dict[str, Any] | None:
    return read_yaml_file(args.config) if args.config else None


def _journal(args: argparse.Namespace) -> Any:
    from sentinel.controller.daemon import load_configs
    from sentinel.controller.journal import Journal, JournalError

    cfg, _policy, _jobs = load_configs(_file_data(args))
    try:
        return Journal(cfg.journal, retention_days=cfg.retention_days)
    except JournalError as e:
        raise ConfigError(f"controller.journal: {e} (approvals and resets need root or the "
                          "sentinel group)") from None


def _who() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{user} (uid {os.getuid()})"


def _serve(args: argparse.Namespace, once: bool) -> int:
    from sentinel.controller.daemon import build, serve

    parts = build(_file_data(args))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return serve(parts, stop, once=once)
    finally:
        parts.journal.close()


def _cmd_run(args: argparse.Namespace) -> int:
    return _serve(args, once=False)


def _cmd_once(args: argparse.Namespace) -> int:
    return _serve(args, once=True)


def _cmd_approve(args: argparse.Namespace) -> int:
    from sentinel.controller.model import ACTION_AWAITING

    j = _journal(args)
    found = j.find_action(args.action_id)
    if len(found) != 1:
        what = "no action" if not found else f"{len(found)} actions"
        print(f"sentinel controller approve: {what} with id {args.action_id!r} (see "
              "`sentinel controller journal`)", file=sys.stderr)
        return EXIT_BAD
    rec = found[0]
    if rec.state != ACTION_AWAITING:
        print(f"sentinel controller approve: action {rec.id} is {rec.state}, not waiting for "
              "approval", file=sys.stderr)
        return EXIT_FOUND
    j.approve(rec.id, _who())
    print(f"approved {rec.id} ({rec.action} for incident {rec.incident_id}); the controller "
          "starts it at its next cycle")
    return EXIT_OK


def _cmd_reset(args: argparse.Namespace) -> int:
    j = _journal(args)
    by = _who() + (f": {args.reason}" if args.reason else "")
    if not j.reset_breaker(by):
        print("the circuit breaker is not open")
        return EXIT_OK
    print(f"circuit breaker reset by {by}; paused actions resume at the next cycle")
    return EXIT_OK


def _cmd_journal(args: argparse.Namespace) -> int:
    j = _journal(args)
    if args.findings:
        for rec in j.findings():
            sys.stdout.write(json.dumps(rec, sort_keys=True) + "\n")
        return EXIT_OK
    incs = [j.incident(args.incident)] if args.incident else j.incidents(limit=args.limit)
    if args.incident and incs[0] is None:
        print(f"sentinel controller journal: no incident {args.incident!r}", file=sys.stderr)
        return EXIT_BAD
    out = []
    for inc in incs:
        assert inc is not None
        acts = j.actions(incident_id=inc.id)
        out.append({"incident": inc.__dict__,
                    "actions": [dict(a.__dict__, steps=[s.__dict__ for s in j.steps(a.id)])
                                for a in acts],
                    "events": j.events(incident_id=inc.id)})
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True, default=str))
        return EXIT_OK
    for item in out:
        inc = item["incident"]
        print(f"{inc['id']} {inc['state']:<10} {inc['kind']} job={inc['job']} "
              f"node={inc['node']}: {inc['summary']}")
        for a in item["actions"]:
            print(f"  {a['id']} {a['action']} ({a['mode']}, attempt {a['attempt']}): "
                  f"{a['state']}{' - ' + a['error'] if a['error'] else ''}")
            for s in a["steps"]:
                err = f" - {s['error']}" if s["error"] else ""
                print(f"    step {s['name']}: {s['state']}{err}")
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from sentinel.controller.daemon import load_configs
    from sentinel.controller.replay import ReplayError, read_records, replay

    cfg, policy, _jobs = load_configs(_file_data(args))
    world = {"ready_spares": args.spares, "nodes_total": args.nodes,
             "node_in_job": args.node_in_job}
    try:
        records = read_records(args.file, world)
    except (OSError, ReplayError) as e:
        print(f"sentinel controller replay: {e}", file=sys.stderr)
        return EXIT_BAD
    acted = False
    total = 0.0
    for d in replay(records, policy, cfg):
        acted = acted or bool(d["action"] and not d["refusal"])
        total += float(d["estimate"].get("seconds", 0.0))
        if args.json:
            sys.stdout.write(json.dumps(d, sort_keys=True) + "\n")
            continue
        what = "no action" if not d["action"] else (
            f"{d['action']} refused ({d['refusal']})" if d["refusal"]
            else f"{d['action']} ({d['mode']})")
        print(f"{d['incident']} {d['summary']}\n  -> {what}: {d['reason']}\n"
              f"     estimated cost: {json.dumps(d['estimate'], sort_keys=True)}")
    if not args.json:
        print(f"{len(records)} finding(s) replayed; estimated cost of the actions: "
              f"{total:.0f} s of job time")
    return EXIT_FOUND if acted else EXIT_OK
