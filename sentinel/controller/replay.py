"""``sentinel controller replay``: what would the policy have done, and what would it cost?

Feeds recorded findings, one cycle each at its own time, through the same Controller
(incidents, history, :func:`~sentinel.controller.policy.decide`) with a journal in a
temporary directory, an executor that acts on nothing and a planner that only estimates.
An action "runs" for its estimated duration and is then taken as verified, so a finding
that arrives meanwhile sees it in progress, as it would have live.

Input lines are either a finding as ``sentinel detect`` prints it, or a journaled record
``{"time", "finding", "world"}`` as ``sentinel controller journal --findings`` prints it;
the world (ready spares, nodes, whether the node runs a job) comes from the record, else
from ``--spares``/``--nodes``/``--node-in-job``.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.controller.actions.base import ActionContext
from sentinel.controller.config import ControllerConfig, PolicyConfig
from sentinel.controller.journal import Journal
from sentinel.controller.loop import Controller
from sentinel.controller.model import (
    ACTION_STARTED,
    ACTION_VERIFIED,
    INCIDENT_RECOVERED,
    ActionRecord,
    Incident,
)
from sentinel.controller.policy import Decision
from sentinel.rules.finding import Finding

# Rough costs for the estimate when the record does not carry measured ones: a
# gpt100m-sized in-process rollback restores in ~2.5 s (docs/BENCHMARKS.md), a requeue
# restarts in about a minute on a real cluster, a burn-in verdict takes ~40 s.
DEFAULT_STEP_SECONDS = 1.0
DEFAULT_RESTORE_SECONDS = 5.0
DEFAULT_REQUEUE_SECONDS = 60.0
DEFAULT_BURNIN_SECONDS = 60.0
DEFAULT_CHECKPOINT_EVERY = 50


class ReplayError(ValueError):
    """A replay input line is not a finding; the message names the line."""


@dataclass
class Record:
    """One finding to replay, at its time, in its world."""

    time: float
    finding: Finding
    world: dict[str, Any]


def read_records(path: str | Path, default_world: dict[str, Any]) -> list[Record]:
    """Read replay input (findings JSONL or journal records), oldest first."""
    out: list[Record] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReplayError(f"{path}:{i}: not JSON ({e.msg})") from None
            raw, world, t = obj, dict(default_world), None
            if isinstance(obj, dict) and "finding" in obj:
                raw, t = obj["finding"], obj.get("time")
                world.update(obj.get("world") or {})
            try:
                f = Finding.from_dict(raw)
            except ValueError as e:
                raise ReplayError(f"{path}:{i}: {e} (valid: a line of `sentinel detect` "
                                  "output or of `sentinel controller journal --findings`)"
                                  ) from None
            when = t if isinstance(t, int | float) else (f.time_end or f.time_start)
            out.append(Record(time=float(when if when is not None else i), finding=f,
                              world=world))
    out.sort(key=lambda r: r.time)
    return out


def estimate(d: Decision, f: Finding, world: dict[str, Any]) -> dict[str, Any]:
    """Estimate what the decided action would cost (seconds of the job, steps lost)."""
    if d.action == "rollback_skip":
        every = int(world.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY))
        step_s = float(world.get("step_seconds", DEFAULT_STEP_SECONDS))
        start = f.step_start or 0
        now_step = int(f.evidence.get("detected_step") or f.step_end or start)
        margin = int(d.params.get("skip_margin", 0)) * int(d.params.get("widen", 1))
        target = max(0, ((start - margin) // every) * every) if every > 0 else 0
        lost = max(0, now_step - target)
        secs = lost * step_s + float(world.get("restore_seconds", DEFAULT_RESTORE_SECONDS))
        return {"steps_lost": lost, "seconds": round(secs, 1), "to_checkpoint": target}
    if d.action == "spare_swap":
        secs = float(world.get("requeue_seconds", DEFAULT_REQUEUE_SECONDS))
        return {"seconds": secs, "node_out": f.node}
    if d.action == "burnin":
        return {"seconds": float(world.get("burnin_seconds", DEFAULT_BURNIN_SECONDS)),
                "node_busy": f.node}
    return {"seconds": 0.0}


class _Feed:
    """A detector that hands over one recorded finding per cycle."""

    def __init__(self) -> None:
        self.next: list[Finding] = []

    def cycle(self, now: float | None = None) -> list[Finding]:
        out, self.next = self.next, []
        return out


class _World:
    def __init__(self) -> None:
        self.current: dict[str, Any] = {}

    def snapshot(self, finding: Finding) -> dict[str, Any]:
        return dict(self.current)


class _SimExecutor:
    """Acts on nothing: an action is "running" for its estimate, then verified."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.ends: dict[str, float] = {}
        self.now = 0.0

    def submit(self, rec: ActionRecord) -> bool:
        self.journal.set_action(rec.id, ACTION_STARTED, now=self.now)
        self.ends[rec.id] = self.now + float(rec.plan.get("estimate", {}).get("seconds", 0.0))
        return True

    def advance(self, now: float) -> None:
        self.now = now
        for aid, end in list(self.ends.items()):
            if end <= now:
                rec = self.journal.action(aid)
                self.journal.set_action(aid, ACTION_VERIFIED, now=end,
                                        outcome={"simulated": True})
                if rec is not None:
                    self.journal.update_incident(rec.incident_id, end, state=INCIDENT_RECOVERED,
                                                 recovered_at=end)
                del self.ends[aid]

    def running(self) -> list[str]:
        return list(self.ends)

    def reap(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        pass


def replay(records: Iterable[Record], policy: PolicyConfig,
           config: ControllerConfig | None = None) -> list[dict[str, Any]]:
    """Return one decision per replayed finding (with the incident and the estimate)."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sentinel-replay-") as tmp:
        clock = [0.0]
        journal = Journal(Path(tmp) / "replay.db", clock=lambda: clock[0])
        cfg = config or ControllerConfig()
        feed, world, sim = _Feed(), _World(), _SimExecutor(journal)
        ctx = ActionContext(config=cfg, policy=policy, journal=journal, jobs={},
                            clock=lambda: clock[0], sleep=threading.Event().wait,
                            steps_of=lambda job: [])

        def planner(c: ActionContext, inc: Incident, f: Finding, d: Decision) -> dict[str, Any]:
            return {"estimate": estimate(d, f, world.current), "node": f.node, "job": f.job,
                    "simulated": True}

        ctl = Controller(cfg, policy, journal, feed, world, ctx, None, clock=lambda: clock[0],
                         executor=sim, planner=planner)  # type: ignore[arg-type]
        for rec in records:
            clock[0] = rec.time
            sim.advance(rec.time)
            world.current = rec.world
            feed.next = [rec.finding]
            before = len(journal.decisions())
            ctl.cycle(rec.time)
            for d in journal.decisions()[before:]:
                est = estimate(Decision(d["action"], d["mode"] or "observe", d["reason"],
                                        d["refusal"], params=d.get("params", {})),
                               rec.finding, rec.world) if d["action"] and not d["refusal"] \
                    else {"seconds": 0.0}
                out.append({"time": rec.time, "incident": d["incident"],
                            "finding": rec.finding.key, "summary": rec.finding.summary,
                            "action": d["action"], "mode": d["mode"], "refusal": d["refusal"],
                            "escalate": d["escalate"], "reason": d["reason"],
                            "estimate": est})
        journal.close()
    return out
