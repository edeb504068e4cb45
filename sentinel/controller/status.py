"""``sentinel status``: what the controller sees and does, read from its journal.

Shows the circuit breaker; incidents open and recent, with their time to detect, decide
and recover, their actions and steps (and the command that approves one waiting); the
spares (the last count the controller's world reported with a decision: the journal
keeps it with each finding); and each followed job's goodput with its badput by cause.

``--json`` prints the same as one JSON object. Exit codes: 0 healthy (no incident open,
breaker closed), 1 an incident is open or the breaker is open, 2 bad config or no
readable journal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from sentinel.config import ConfigError, read_yaml_file
from sentinel.controller.goodput import CAUSES, incident_times
from sentinel.controller.journal import Journal
from sentinel.controller.model import ACTION_AWAITING, Incident

EXIT_OK, EXIT_FOUND, EXIT_BAD = 0, 1, 2
# Incidents that ended this recently are listed as "recent".
DEFAULT_RECENT_HOURS = 24.0
# At most this many recent incidents (newest first) are listed.
RECENT_MAX = 50


def register(subparsers: Any) -> None:
    """Add the ``status`` command."""
    p = subparsers.add_parser("status", help="incidents, actions, spares, breaker and goodput "
                              "from the controller's journal", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (its controller.journal is read)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--recent-hours", type=float, default=DEFAULT_RECENT_HOURS,
                   help="list incidents that ended within this many hours (default 24)")
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from sentinel.controller.daemon import load_configs
    from sentinel.controller.journal import JournalError

    cfg, _policy, jobs = load_configs(read_yaml_file(args.config) if args.config else None)
    if not os.path.exists(cfg.journal):
        raise ConfigError(f"controller.journal: no journal at {cfg.journal} (the controller "
                          "has not run with this config, or --config names another file)")
    try:
        journal = Journal(cfg.journal, retention_days=cfg.retention_days)
    except JournalError as e:
        raise ConfigError(f"controller.journal: {e} (reading it needs root or the sentinel "
                          "group)") from None
    try:
        report = collect(journal, time.time(), args.recent_hours, followed=sorted(jobs))
    finally:
        journal.close()
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        sys.stdout.write(render(report))
    return EXIT_OK if report["healthy"] else EXIT_FOUND


# -- what to show ----------------------------------------------------------------------

def _incident(journal: Journal, inc: Incident) -> dict[str, Any]:
    t = incident_times(inc)
    actions = []
    for a in journal.actions(incident_id=inc.id):
        actions.append({
            "id": a.id, "action": a.action, "mode": a.mode, "attempt": a.attempt,
            "state": a.state, "node": a.node, "job": a.job, "reason": a.reason,
            "error": a.error, "created_at": a.created_at, "started_at": a.started_at,
            "ended_at": a.ended_at,
            "steps": [{"name": s.name, "state": s.state, "error": s.error,
                       "started_at": s.started_at, "ended_at": s.ended_at}
                      for s in journal.steps(a.id)],
        })
    return {"id": inc.id, "kind": inc.kind, "state": inc.state, "severity": inc.severity,
            "job": inc.job, "node": inc.node, "summary": inc.summary,
            "opened_at": inc.opened_at, "detected_at": inc.detected_at,
            "decided_at": inc.decided_at, "recovered_at": inc.recovered_at,
            "closed_at": inc.closed_at,
            "time_to": {"detect": t.detect, "decide": t.decide, "recover": t.recover},
            "actions": actions}


def _goodput(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["start"] is None or r["last"] is None:
            continue
        wall = float(r["last"]) - float(r["start"])
        out.append({"job": r["job"], "wall_seconds": wall,
                    "productive_seconds": float(r["productive"]),
                    "ratio": float(r["productive"]) / wall if wall > 0 else None,
                    "unclassified_seconds": float(r["pending"]),
                    "badput_seconds": {c: float(r["badput"].get(c, 0.0)) for c in CAUSES},
                    "last_step_time": r["last"]})
    return out


def collect(journal: Journal, now: float, recent_hours: float = DEFAULT_RECENT_HOURS, *,
            followed: list[str] | None = None) -> dict[str, Any]:
    """Return the status as JSON-ready data (``healthy``: nothing open, breaker closed)."""
    br = journal.breaker()
    open_incs = journal.incidents(open_only=True)
    recent = [i for i in journal.incidents(since=now - recent_hours * 3600.0, limit=500)
              if not i.open and (i.closed_at or 0.0) >= now - recent_hours * 3600.0]
    world = journal.latest_world()
    spares: dict[str, Any] = {"ready": None, "as_of": None}
    if world is not None and int(world[1].get("ready_spares", -1)) >= 0:
        spares = {"ready": int(world[1]["ready_spares"]), "as_of": world[0],
                  "nodes_total": int(world[1].get("nodes_total", 0)) or None}
    awaiting = [{"id": a.id, "action": a.action, "incident": a.incident_id, "node": a.node,
                 "job": a.job, "since": a.created_at, "plan": a.plan}
                for a in journal.actions(states=[ACTION_AWAITING])]
    return {
        "time": now,
        "journal": str(journal.path),
        "healthy": not open_incs and not br.open,
        "breaker": {"open": br.open, "reason": br.reason, "since": br.since,
                    "reset_by": br.reset_by, "reset_at": br.reset_at},
        "spares": spares,
        "incidents": {"open": [_incident(journal, i) for i in open_incs],
                      "recent": [_incident(journal, i) for i in recent[:RECENT_MAX]],
                      "recent_hours": recent_hours},
        "awaiting_approval": awaiting,
        "goodput": _goodput(journal.goodput()),
        "jobs_followed": followed or [],
    }


# -- text ------------------------------------------------------------------------------

def duration(s: float | None) -> str:
    """Return seconds as people read them: 12.3 s, 5m 03s, 2h 05m."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _incident_lines(inc: dict[str, Any], now: float) -> list[str]:
    where = " ".join(f"{k}={inc[k]}" for k in ("job", "node") if inc[k])
    t = inc["time_to"]
    out = [f"  {inc['id']} {inc['kind']} {where} {inc['state']}: {inc['summary']}",
           f"    detected in {duration(t['detect'])}, decided in {duration(t['decide'])}, "
           + (f"recovered in {duration(t['recover'])}" if t["recover"] is not None else
              f"open for {duration(now - inc['opened_at'])}" if inc["closed_at"] is None
              else f"ended {_when(inc['closed_at'])}")]
    for a in inc["actions"]:
        err = f" - {a['error']}" if a["error"] else ""
        out.append(f"    {a['id']} {a['action']} ({a['mode']}, attempt {a['attempt']}): "
                   f"{a['state']}{err}")
        if a["state"] == ACTION_AWAITING:
            out.append(f"      approve with: sentinel controller approve {a['id']}")
        for s in a["steps"]:
            serr = f" - {s['error']}" if s["error"] else ""
            out.append(f"      step {s['name']}: {s['state']}{serr}")
    return out


def render(report: dict[str, Any]) -> str:
    """Return the status as text."""
    now = report["time"]
    br = report["breaker"]
    lines = [f"sentinel controller status at {_when(now)} (journal {report['journal']})"]
    if br["open"]:
        lines.append(f"breaker: OPEN since {_when(br['since'])}: {br['reason']}; every action "
                     "is paused until `sentinel controller reset-breaker`")
    else:
        reset = f" (last reset by {br['reset_by']} at {_when(br['reset_at'])})" \
            if br["reset_at"] else ""
        lines.append(f"breaker: closed{reset}")
    sp = report["spares"]
    lines.append(f"spares: {sp['ready']} ready (as of {_when(sp['as_of'])}, the last decision's "
                 "view of the scheduler)" if sp["ready"] is not None else
                 "spares: unknown (no scheduler has reported ready spares)")
    inc = report["incidents"]
    lines.append(f"incidents open: {len(inc['open'])}")
    for i in inc["open"]:
        lines += _incident_lines(i, now)
    lines.append(f"incidents ended in the last {inc['recent_hours']:g} h: {len(inc['recent'])}")
    for i in inc["recent"]:
        lines += _incident_lines(i, now)
    lines.append(f"goodput ({len(report['goodput'])} job(s)):" if report["goodput"] else
                 "goodput: no step records accounted yet")
    for g in report["goodput"]:
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.1%}"
        lost = ", ".join(f"{c} {duration(v)}" for c, v in g["badput_seconds"].items() if v > 0)
        lines.append(f"  {g['job']}: {ratio} productive over {duration(g['wall_seconds'])}; "
                     f"lost: {lost or 'nothing'}"
                     + (f"; {duration(g['unclassified_seconds'])} of pauses not yet classified"
                        if g["unclassified_seconds"] > 0 else ""))
    lines.append("healthy" if report["healthy"] else "needs attention: "
                 + ("the breaker is open" if br["open"] else "")
                 + (" and " if br["open"] and inc["open"] else "")
                 + (f"{len(inc['open'])} incident(s) open" if inc["open"] else ""))
    return "\n".join(lines) + "\n"
