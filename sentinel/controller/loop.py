"""The controller's loop: rules -> policy -> journal -> action -> verify -> tell, each cycle.

:class:`Controller` owns one cycle (``cycle(now)``): it asks the rules engine for the
findings that are new, changed or resolved, turns each into an incident (new or
existing), asks :func:`~sentinel.controller.policy.decide` what to do, journals the
decision and, in ``act`` mode, the intent, and hands the action to the executor's
threads. It then looks again at what changed without a finding: approvals given,
approvals expired, actions that failed (to retry or escalate), actions paused by the
breaker; and it charges the followed jobs' lost time to its causes (``goodput.py``). The
daemon (``daemon.serve``) calls ``cycle`` every ``controller.interval_seconds`` and, in
between, ``tick`` whenever the rules engine has a rule due (the step-stream rules run
every 2 s): a tick handles the findings (decisions, actions started, what is told) and
nothing else; the rechecks, the goodput and the observers (the metrics) are per cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sentinel.controller.actions import ACTIONS
from sentinel.controller.actions.base import ActionContext
from sentinel.controller.config import ControllerConfig, PolicyConfig
from sentinel.controller.executor import Executor, abort, testing_crash_point
from sentinel.controller.goodput import GoodputAccountant
from sentinel.controller.journal import Journal
from sentinel.controller.model import (
    ACTION_AWAITING,
    ACTION_FAILED,
    ACTION_INTENT,
    ACTION_OBSERVED,
    ACTION_STARTED,
    ACTION_UNFINISHED,
    INCIDENT_ESCALATED,
    INCIDENT_OPEN,
    INCIDENT_RESOLVED,
    TRANSIENT,
    ActionFailed,
    ActionRecord,
    Incident,
)
from sentinel.controller.policy import (
    Decision,
    History,
    PastAction,
    decide,
    incident_group,
    joined_group,
)
from sentinel.rules.engine import signature
from sentinel.rules.finding import Finding

log = logging.getLogger(__name__)


class Detector(Protocol):
    """The rules engine as the controller drives it (sentinel.rules.online)."""

    def cycle(self, now: float | None = None) -> list[Finding]:
        """Return the findings that are new, changed or resolved since the last cycle
        (of the rules due at ``now``).
        """


class World(Protocol):
    """What the policy needs to know about the cluster when it decides."""

    def snapshot(self, finding: Finding) -> dict[str, Any]:
        """Return ``nodes_total``, ``ready_spares`` (-1 unknown) and ``node_in_job``."""


class Teller(Protocol):
    """Tell people about incidents (sentinel.controller.tell)."""

    def incident(self, inc: Incident, finding: Finding, decision: Decision,
                 record: ActionRecord | None) -> None:
        """Tell a finding and the decision taken about it."""

    def progress(self, record: ActionRecord, what: str, text: str,
                 data: dict[str, Any] | None = None) -> None:
        """Tell one step of an action."""

    def closed(self, inc: Incident, why: str) -> None:
        """Tell that an incident ended (recovered, escalated, resolved)."""

    def breaker(self, tripped: bool, why: str) -> None:
        """Tell that the breaker tripped or was reset."""

    def flush(self) -> None:
        """Deliver what is queued (bounded; never raises)."""


@dataclass
class CycleStats:
    """What one cycle did (for logs, metrics and ``once``)."""

    findings: int = 0
    decisions: int = 0
    started: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long the cycle took


class Controller:
    """One controller: its journal, policy, actions and the detector it drives."""

    def __init__(self, config: ControllerConfig, policy: PolicyConfig, journal: Journal,
                 detector: Detector, world: World, ctx: ActionContext,
                 teller: Teller | None = None, *, clock: Callable[[], float],
                 executor: Executor | None = None,
                 planner: Callable[[ActionContext, Incident, Finding, Decision],
                                   dict[str, Any]] | None = None) -> None:
        self.config = config
        self.policy = policy
        self.journal = journal
        self.detector = detector
        self.world = world
        self.ctx = ctx
        self.teller = teller
        self.clock = clock
        self.executor = executor or Executor(ctx, config.max_concurrent_actions,
                                             on_finished=self._action_finished)
        # Replay plans without looking at the world (sentinel.controller.replay).
        self.planner = planner or (lambda c, i, f, d: ACTIONS[str(d.action)].plan(c, i, f, d))
        self._cycle_lock = threading.Lock()
        # Each cycle charges the followed jobs' lost time (sentinel.controller.goodput).
        self.goodput = GoodputAccountant(journal, lambda: list(ctx.jobs), ctx.steps_of)
        # Called after each cycle with (now, stats): the metrics (sentinel.controller.metrics).
        self.observers: list[Callable[[float, CycleStats], None]] = []
        self.cycles = 0
        self.last_cycle_ok = True
        # The action whose plan failed permanently in this decision (escalate its incident).
        self._escalate_after: str | None = None

    # -- start, stop -----------------------------------------------------------------

    def resume(self) -> list[str]:
        """Resume every action the journal says is unfinished (after a restart)."""
        resumed = []
        for rec in self.journal.unfinished_actions():
            if rec.state == ACTION_AWAITING:
                continue  # still waits for its approval
            self.journal.event("resumed", f"{rec.action} {rec.state} at restart: resuming",
                               incident_id=rec.incident_id, action_id=rec.id)
            if self.executor.submit(rec):
                resumed.append(rec.id)
        return resumed

    def stop(self, wait: bool = True) -> None:
        """Stop the executor (actions in flight resume at the next start)."""
        self.executor.shutdown(wait=wait)

    # -- one cycle -------------------------------------------------------------------

    def cycle(self, now: float | None = None) -> CycleStats:
        """Run one cycle: findings, decisions, actions, then what changed without a finding."""
        with self._cycle_lock:
            t0 = time.monotonic()
            now = self.clock() if now is None else now
            stats = self._findings(now)
            self._recheck(now, stats)
            stats.errors += self.goodput.cycle(now)
            self._after()
            self.cycles += 1
            self.last_cycle_ok = not stats.errors
            stats.seconds = time.monotonic() - t0
            for observe in self.observers:
                try:
                    observe(now, stats)
                except Exception:  # noqa: BLE001 - metrics must not stop the loop
                    log.exception("cycle observer %r failed", observe)
            return stats

    def tick(self, now: float | None = None) -> CycleStats:
        """Run the rules that are due and handle their findings, between two cycles.

        What a finding calls for is decided, journaled, started and told at once, so a
        step-stream finding is acted on seconds after it is found; approvals, retries,
        goodput and metrics wait for the cycle (they change on the scale of minutes).
        """
        with self._cycle_lock:
            t0 = time.monotonic()
            now = self.clock() if now is None else now
            stats = self._findings(now)
            self._after()
            stats.seconds = time.monotonic() - t0
            return stats

    def next_due(self) -> float | None:
        """Return when the rules engine has its next rule due (None: only at each cycle)."""
        due = getattr(self.detector, "next_due", None)
        if not callable(due):
            return None  # a detector without cadence runs with the cycle
        when = due()
        return float(when) if isinstance(when, int | float) else None

    def _findings(self, now: float) -> CycleStats:
        """Ask the detector for its changes and handle each."""
        stats = CycleStats()
        try:
            changes = self.detector.cycle(now)
        except Exception as e:  # noqa: BLE001 - a failing source must not stop the loop
            log.warning("rules engine cycle failed: %s", e)
            stats.errors.append(f"rules: {e}")
            changes = []
        for f in changes:
            stats.findings += 1
            try:
                self._on_finding(f, now, stats)
            except Exception as e:
                log.exception("finding %s: cannot handle it", f.key)
                stats.errors.append(f"{f.key}: {e}")
        return stats

    def _after(self) -> None:
        """Collect finished actions and deliver what is to be told."""
        self.executor.reap()
        if self.teller is not None:
            self.teller.flush()

    def _seen_before(self, f: Finding) -> bool:
        """Whether this finding, unchanged, was already handled (a restart re-reports it).

        The rules engine starts with no memory, so after a restart it reports every
        finding still in its windows as new. One whose newest journaled copy has the same
        state, severity, action and class was dealt with already: acting on it again would
        roll a job back twice for one spike.
        """
        last = self.journal.last_finding(f.key)
        if last is None:
            return False
        prev = Finding.from_dict(last[1])
        return signature(prev) == signature(f)

    def _on_finding(self, f: Finding, now: float, stats: CycleStats) -> None:
        group = incident_group(f)
        inc = self.journal.open_incident_for(group)
        if inc is None:
            other = joined_group(group, [i.group for i in self.journal.incidents(open_only=True)])
            inc = self.journal.open_incident_for(other) if other else None
        if inc is None:
            if f.state == "resolved" and f.kind != "loss_spike":
                return  # the end of something that never became an incident
            if self._seen_before(f):
                log.info("finding %s: handled before (incident closed); not reopened", f.key)
                return
            inc = self.journal.open_incident(group, f.to_dict(), now)
        else:
            if self._seen_before(f):
                return
            self.journal.update_incident(inc.id, now, finding=f.to_dict(), summary=f.summary,
                                         severity=f.severity)
            inc = self.journal.incident(inc.id) or inc
        self.decide_and_apply(inc, f, now, stats)

    def history(self, inc: Incident, world: dict[str, Any], now: float) -> History:
        """Build what the policy may know: recent actions, breaker, the world's numbers."""
        horizon = max(self.policy.cooldown_node_seconds, self.policy.cooldown_job_seconds,
                      self.policy.breaker_window_seconds, 3600.0)
        recs = {r.id: r for r in self.journal.actions(since=now - horizon)}
        recs.update({r.id: r for r in self.journal.actions(incident_id=inc.id)})
        past = tuple(PastAction(action=r.action, incident=r.incident_id, mode=r.mode,
                                state=r.state, time=r.started_at or r.created_at, node=r.node,
                                job=r.job, outcome_class=r.outcome_class, attempt=r.attempt)
                     for r in sorted(recs.values(), key=lambda r: r.created_at))
        transient = 0
        for r in reversed([p for p in past if p.incident == inc.id and p.mode == "act"]):
            if r.state == ACTION_FAILED and r.outcome_class == TRANSIENT:
                transient += 1
            else:
                break
        br = self.journal.breaker()
        return History(incident=inc.id, actions=past, breaker_open=br.open,
                       breaker_reason=br.reason, nodes_total=int(world.get("nodes_total", 0)),
                       ready_spares=int(world.get("ready_spares", -1)),
                       node_in_job=bool(world.get("node_in_job", False)),
                       transient_failures=transient)

    def decide_and_apply(self, inc: Incident, f: Finding, now: float,
                         stats: CycleStats | None = None) -> Decision:
        """Decide about a finding of an incident, journal it, and act on the decision."""
        stats = stats or CycleStats()
        world = self.world.snapshot(f)
        self.journal.record_finding(inc.id, f.to_dict(), world, now)
        d = decide(f, self.history(inc, world, now), now, self.policy)
        stats.decisions += 1
        self.journal.record_decision(inc.id, f.key, d.to_dict(), now)
        if inc.decided_at is None:
            self.journal.update_incident(inc.id, now, decided_at=now)
        if d.trip_breaker and self.journal.trip_breaker(d.trip_breaker, now):
            if self.teller is not None:
                self.teller.breaker(True, d.trip_breaker)
        record = self._apply(inc, f, d, now, stats)
        if self.teller is not None:
            self.teller.incident(self.journal.incident(inc.id) or inc, f, d, record)
        self._maybe_close(inc, f, d, now)
        return d

    def _apply(self, inc: Incident, f: Finding, d: Decision, now: float,
               stats: CycleStats) -> ActionRecord | None:
        if d.action is None or d.refusal:
            if d.refusal:
                stats.refused += 1
            return None
        try:
            plan = self.planner(self.ctx, inc, f, d)
        except ActionFailed as e:
            rec = self.journal.add_action(inc.id, d.action, d.mode, ACTION_FAILED, plan={},
                                          node=f.node, job=f.job, reason=d.reason, now=now)
            self.journal.set_action(rec.id, ACTION_FAILED, outcome_class=e.outcome_class,
                                    error=f"cannot plan: {e}", now=now)
            if e.outcome_class != TRANSIENT:
                self._escalate_after = rec.id
            return self.journal.action(rec.id)
        state = {"observe": ACTION_OBSERVED, "ask": ACTION_AWAITING}.get(d.mode, ACTION_INTENT)
        rec = self.journal.add_action(inc.id, d.action, d.mode, state, plan=plan,
                                      node=plan.get("node", f.node), job=plan.get("job", f.job),
                                      reason=d.reason, now=now)
        if state == ACTION_INTENT:
            testing_crash_point(f"{d.action}/intent")
            self.executor.submit(rec)
            stats.started += 1
        return rec

    def _maybe_close(self, inc: Incident, f: Finding, d: Decision, now: float) -> None:
        acts = self.journal.actions(incident_id=inc.id)
        unplannable = self._escalate_after is not None and bool(acts) \
            and acts[-1].id == self._escalate_after
        self._escalate_after = None
        if d.escalate or unplannable:
            self._close(inc.id, INCIDENT_ESCALATED, d.reason if d.escalate else
                        f"{acts[-1].action} {acts[-1].error}: handed to a person", now)
            return
        if any(a.state in ACTION_UNFINISHED for a in acts):
            return
        # An incident groups findings (a drop and its diagnoses, one per cause): it ends
        # when the last of them does, not when a first cause gives way to the next.
        if f.state == "resolved" and d.action is None and not self.journal.firing_keys(inc.id):
            self._close(inc.id, INCIDENT_RESOLVED, "the finding resolved", now)

    def _close(self, incident_id: str, state: str, why: str, now: float) -> None:
        self.journal.update_incident(incident_id, now, state=state)
        inc = self.journal.incident(incident_id)
        if self.teller is not None and inc is not None:
            self.teller.closed(inc, why)

    # -- what changes without a finding ----------------------------------------------

    def _recheck(self, now: float, stats: CycleStats) -> None:
        breaker_open = self.journal.breaker().open
        running = set(self.executor.running())
        for rec in self.journal.unfinished_actions():
            if rec.state == ACTION_AWAITING:
                self._check_approval(rec, now, stats)
            elif not breaker_open and rec.id not in running and rec.state in (
                    ACTION_INTENT, ACTION_STARTED):
                # Paused by the breaker, or left by a stop: carry on.
                self.executor.submit(rec)
        for inc in self.journal.incidents(open_only=True):
            self._recheck_failed(inc, now, stats)

    def _check_approval(self, rec: ActionRecord, now: float, stats: CycleStats) -> None:
        if self.journal.approval(rec.id) is not None:
            self.journal.set_action(rec.id, ACTION_INTENT, now=now)
            rec = self.journal.action(rec.id) or rec
            self.executor.submit(rec)
            stats.started += 1
        elif now - rec.created_at > self.config.approval_timeout_seconds:
            abort(self.ctx, rec, f"not approved within {self.config.approval_timeout_seconds:.0f}"
                  " s (controller.approval_timeout_seconds)")

    def _recheck_failed(self, inc: Incident, now: float, stats: CycleStats) -> None:
        acts = self.journal.actions(incident_id=inc.id)
        if not acts or acts[-1].state != ACTION_FAILED or any(
                a.state in ACTION_UNFINISHED for a in acts):
            return
        last = acts[-1]
        decided = [d["time"] for d in self.journal.decisions(inc.id)]
        if decided and max(decided) >= (last.ended_at or last.updated_at):
            return  # already decided after this failure
        if inc.state != INCIDENT_OPEN:
            self.journal.update_incident(inc.id, now, state=INCIDENT_OPEN)
        f = Finding.from_dict(inc.finding)
        self.decide_and_apply(self.journal.incident(inc.id) or inc, f, now, stats)

    def _action_finished(self, rec: ActionRecord) -> None:
        """Executor callback (an action thread): a failed action sends its incident back."""
        if rec.state == ACTION_FAILED:
            inc = self.journal.incident(rec.incident_id)
            if inc is not None and inc.open:
                self.journal.update_incident(inc.id, state=INCIDENT_OPEN)
