"""Tell people: one Slack thread per incident, through sentinel.notify's on-disk outbox.

The thread opens with the finding and the decision (refusals too: "breaker open",
"no ready spare", "cooldown"), then gets a reply for each action step, the verification
and the end, and a PNG of the loss (and tokens/sec) around the incident when the job's
steps are known. Every message has an idempotency key made from the incident, the action
and the step, so a controller that dies and redoes a step's bookkeeping never posts the
same line twice, and nothing is lost while Slack is down (the outbox keeps it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from sentinel.controller.model import ActionRecord, Incident
from sentinel.controller.policy import Decision
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint

log = logging.getLogger(__name__)

# Steps either side of an incident's first step drawn in its plot.
PLOT_STEPS_BEFORE = 300
PLOT_STEPS_AFTER = 300
# A flush per cycle sends at most this many messages (the rest wait for the next cycle).
FLUSH_MAX = 20


def _h(*parts: Any) -> str:
    """Return a short stable digest (idempotency keys must survive a restart)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _fields(f: Finding) -> dict[str, str]:
    out = {}
    for k in ("job", "node", "gpu"):
        v = getattr(f, k)
        if v:
            out[k] = str(v)
    if f.step_start is not None:
        out["steps"] = f"{f.step_start}-{f.step_end}"
    return out


class SlackTeller:
    """Turn incidents, decisions and action steps into notify messages."""

    def __init__(self, notifier: Any, steps_of: Callable[[str], list[StepPoint]] | None = None
                 ) -> None:
        self.notifier = notifier
        self.steps_of = steps_of

    def _send(self, incident: str, kind: str, title: str, text: str, key: str,
              severity: str = "info", fields: dict[str, str] | None = None) -> None:
        from sentinel.notify.message import Notification

        try:
            self.notifier.notify(Notification(incident, kind, title, text, severity,
                                              dict(fields or {}), key=key))
        except Exception as e:  # noqa: BLE001 - telling must never stop acting
            log.warning("cannot queue a message for incident %s: %s", incident, e)

    def _series(self, f: Finding) -> Any | None:
        from sentinel.notify.message import Series

        if self.steps_of is None or not f.job or f.step_start is None:
            return None
        try:
            pts = self.steps_of(f.job)
        except Exception as e:  # noqa: BLE001 - a plot is a nicety
            log.debug("no steps for the plot of %s: %s", f.job, e)
            return None
        lo, hi = f.step_start - PLOT_STEPS_BEFORE, f.step_start + PLOT_STEPS_AFTER
        by_step: dict[int, StepPoint] = {}
        for p in pts:
            if lo <= p.step <= hi and (p.rank in (0, None)):
                by_step[p.step] = p  # the newest timeline wins for a repeated step
        if len(by_step) < 2:
            return None
        steps = sorted(by_step)
        return Series(step=steps, loss=[by_step[s].loss for s in steps],
                      mark_step=f.step_start)

    def incident(self, inc: Incident, finding: Finding, decision: Decision,
                 record: ActionRecord | None) -> None:
        """Open the incident's thread (first time) or reply with the new decision."""
        sev = finding.severity if finding.severity in ("info", "warning", "critical") else "warning"
        what = self._decision_text(decision, record)
        key = f"{inc.id}:decision:{_h(finding.key, finding.state, decision.to_dict())}"
        try:
            # The opening is keyed by the incident alone: after a restart it is a duplicate,
            # and the decision goes into the thread as a reply instead.
            opened = self.notifier.open_incident(
                inc.id, f"[{inc.id}] {finding.summary}", what, severity=sev,
                fields=_fields(finding), series=self._series(finding), key=f"{inc.id}:open")
        except Exception as e:  # noqa: BLE001 - telling must never stop acting
            log.warning("cannot queue the opening of incident %s: %s", inc.id, e)
            return
        if opened == "queued":
            return
        self._send(inc.id, "update", f"[{inc.id}] {finding.summary}", what, key, sev,
                   _fields(finding))

    @staticmethod
    def _decision_text(d: Decision, record: ActionRecord | None) -> str:
        if d.action is None:
            return f"Decision: no action. {d.reason}"
        if d.refusal:
            tail = " Handed to a person." if d.escalate else ""
            return f"Decision: {d.action} refused ({d.refusal}). {d.reason}{tail}"
        if record is None:
            return f"Decision: {d.action} ({d.mode}). {d.reason}"
        from sentinel.controller.actions import ACTIONS

        try:
            plan = ACTIONS[record.action].describe(record.plan) if record.plan else ""
        except Exception:  # noqa: BLE001 - describing is best effort
            plan = ""
        if record.state == "failed":
            return f"Decision: {d.action}, but it cannot be planned: {record.error}"
        if d.mode == "observe":
            return (f"Decision: {d.action} (observe mode: nothing done). Plan: {plan}. "
                    f"{d.reason}")
        if d.mode == "ask":
            return (f"Decision: {d.action} waits for approval: `sentinel controller approve "
                    f"{record.id}`. Plan: {plan}. {d.reason}")
        return f"Decision: {d.action} (act), action {record.id}. Plan: {plan}. {d.reason}"

    def progress(self, record: ActionRecord, what: str, text: str,
                 data: dict[str, Any] | None = None) -> None:
        """Reply with one step of an action."""
        sev = "critical" if what == "failed" else "info"
        self._send(record.incident_id, "update", f"[{record.incident_id}] {record.action}: "
                   f"{what}", text, f"{record.id}:{what}:{_h(text)}", sev)

    def closed(self, inc: Incident, why: str) -> None:
        """Reply that the incident ended."""
        kind = "resolved"
        self._send(inc.id, kind, f"[{inc.id}] {inc.state}: {inc.summary}", why,
                   f"{inc.id}:closed:{inc.state}", "info")

    def breaker(self, tripped: bool, why: str) -> None:
        """Post the breaker's change in its own thread."""
        title = "circuit breaker tripped: every action paused" if tripped else \
            "circuit breaker reset: actions resume"
        self._send("breaker", "open" if tripped else "resolved", title, why,
                   f"breaker:{tripped}:{_h(why)}", "critical" if tripped
                   else "info")

    def flush(self) -> None:
        """Send what is due (bounded); errors are logged, never raised."""
        try:
            self.notifier.flush(max_messages=FLUSH_MAX)
        except Exception as e:  # noqa: BLE001 - Slack down must not stop the loop
            log.warning("notify flush failed: %s", e)
