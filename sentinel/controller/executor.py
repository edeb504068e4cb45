"""Run actions' steps with the journal, in a bounded pool of threads; resume after a crash.

For each step: if the journal says it is done, its outcome is reused; if the journal says
it started but never ended (the controller died in between), the step's ``check`` asks
the world whether it happened, and only if not is it run again. Then: journal
``started`` -> run -> journal ``done`` (or ``failed``). When every step is done the
action is ``done``; its verification then makes it ``verified`` or ``failed``.

A test-only hook kills the process at a named boundary (``SENTINEL_CONTROLLER_TESTING_CRASH_AT``,
a comma-separated list of ``ACTION/intent``, ``ACTION/STEP/before``, ``ACTION/STEP/after``,
``ACTION/verify/before``, ``ACTION/verify/after``), so the kill -9 tests can stop the
controller exactly between "did it" and "wrote it down".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sentinel.controller.actions import ACTIONS
from sentinel.controller.actions.base import ActionContext, Run, Step
from sentinel.controller.model import (
    ACTION_ABORTED,
    ACTION_DONE,
    ACTION_FAILED,
    ACTION_INTENT,
    ACTION_STARTED,
    ACTION_VERIFIED,
    INCIDENT_ACTING,
    INCIDENT_RECOVERED,
    PERMANENT,
    STEP_DONE,
    STEP_STARTED,
    TRANSIENT,
    ActionFailed,
    ActionRecord,
)

log = logging.getLogger(__name__)

CRASH_ENV = "SENTINEL_CONTROLLER_TESTING_CRASH_AT"


def testing_crash_point(point: str) -> None:
    """Kill this process with SIGKILL if the test hook names ``point`` (tests only)."""
    wanted = os.environ.get(CRASH_ENV, "")
    if wanted and point in {p.strip() for p in wanted.split(",")}:
        log.warning("testing crash hook: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)


class Paused(Exception):
    """The breaker opened while an action ran: it stops before its next step."""


class Executor:
    """Run actions in at most ``max_workers`` threads; each action at most once at a time."""

    def __init__(self, ctx: ActionContext, max_workers: int,
                 on_finished: Callable[[ActionRecord], None] | None = None) -> None:
        self.ctx = ctx
        self.on_finished = on_finished
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="sentinel-action")
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def running(self) -> list[str]:
        """Return the ids of the actions submitted and not finished."""
        with self._lock:
            return [k for k, f in self._running.items() if not f.done()]

    def submit(self, record: ActionRecord) -> bool:
        """Run (or resume) an action; False if it is already running here."""
        with self._lock:
            fut = self._running.get(record.id)
            if fut is not None and not fut.done():
                return False
            self._running[record.id] = self._pool.submit(self._guarded, record.id)
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no action runs; False on timeout."""
        with self._lock:
            futs = list(self._running.values())
        from concurrent.futures import wait

        _done, pending = wait(futs, timeout=timeout)
        return not pending

    def reap(self) -> None:
        """Forget finished futures (bounded bookkeeping)."""
        with self._lock:
            for k in [k for k, f in self._running.items() if f.done()]:
                del self._running[k]

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; actions in flight stop at their next sleep or step."""
        self.stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _guarded(self, action_id: str) -> None:
        try:
            self.execute(action_id)
        except Exception:
            log.exception("action %s: unexpected error", action_id)
            try:
                self.ctx.journal.set_action(action_id, ACTION_FAILED, outcome_class=TRANSIENT,
                                            error="internal error (see the controller's log)")
            except Exception:  # noqa: BLE001 - the journal itself may be the problem
                log.exception("action %s: cannot journal the failure", action_id)

    # -- one action ------------------------------------------------------------------

    def execute(self, action_id: str) -> ActionRecord | None:
        """Carry out (or resume) one action to its end; return its final record."""
        j = self.ctx.journal
        rec = j.action(action_id)
        if rec is None or rec.state not in (ACTION_INTENT, ACTION_STARTED, ACTION_DONE):
            return rec
        impl = ACTIONS[rec.action]
        run = Run(ctx=self.ctx, record=rec)
        if rec.state == ACTION_DONE:
            # Resumed between the steps and the verification: verify reads their outcomes.
            run.outputs.update({s.name: s.outcome for s in j.steps(rec.id)
                                if s.state == STEP_DONE})
        try:
            if rec.state != ACTION_DONE:
                if rec.state == ACTION_INTENT:
                    j.set_action(rec.id, ACTION_STARTED)
                    j.update_incident(rec.incident_id, state=INCIDENT_ACTING)
                    run.tell("started", f"{rec.action} started: {impl.describe(rec.plan)}")
                for seq, step in enumerate(impl.steps(rec.plan)):
                    self._step(run, seq, step)
                j.set_action(rec.id, ACTION_DONE, outcome=self._outcome(run))
            testing_crash_point(f"{rec.action}/verify/before")
            evidence = impl.verify(run)
            testing_crash_point(f"{rec.action}/verify/after")
        except Paused:
            run.tell("paused", f"{rec.action} paused: the circuit breaker is open; it resumes "
                     "after `sentinel controller reset-breaker`")
            return j.action(rec.id)
        except ActionFailed as e:
            j.set_action(rec.id, ACTION_FAILED, outcome=dict(self._outcome(run), **e.data),
                         outcome_class=e.outcome_class, error=str(e))
            run.tell("failed", f"{rec.action} failed ({e.outcome_class}): {e}",
                     {"outcome_class": e.outcome_class})
            return self._finished(rec.id)
        j.set_action(rec.id, ACTION_VERIFIED, outcome=dict(self._outcome(run), verify=evidence))
        j.update_incident(rec.incident_id, state=INCIDENT_RECOVERED,
                          recovered_at=self.ctx.clock())
        run.tell("verified", f"{rec.action} verified: {evidence.get('summary', 'done')}",
                 evidence)
        return self._finished(rec.id)

    def _finished(self, action_id: str) -> ActionRecord | None:
        rec = self.ctx.journal.action(action_id)
        if rec is not None and self.on_finished is not None:
            self.on_finished(rec)
        return rec

    @staticmethod
    def _outcome(run: Run) -> dict[str, Any]:
        return {"steps": {k: v for k, v in run.outputs.items()}}

    def _step(self, run: Run, seq: int, step: Step) -> None:
        j, rec = self.ctx.journal, run.record
        prior = j.step(rec.id, step.name)
        if prior is not None and prior.state == STEP_DONE:
            run.outputs[step.name] = prior.outcome
            return
        if self.stopping.is_set():
            raise ActionFailed("the controller is stopping; resumed at its next start",
                               TRANSIENT)
        if step.pauses_on_breaker and j.breaker().open:
            raise Paused()
        if prior is not None and prior.state == STEP_STARTED and step.check is not None:
            # The controller died after starting this step: did it happen?
            seen = step.check(run)
            if seen is not None:
                j.step_ended(rec.id, step.name, ok=True, outcome=dict(seen, reconciled=True))
                run.outputs[step.name] = dict(seen, reconciled=True)
                run.tell("reconciled", f"{rec.action}: step {step.name} had been done before "
                         "the controller restarted; not doing it again")
                return
        j.step_started(rec.id, seq, step.name, {"plan": rec.plan, "after": list(run.outputs)})
        testing_crash_point(f"{rec.action}/{step.name}/before")
        try:
            out = step.run(run)
        except ActionFailed as e:
            j.step_ended(rec.id, step.name, ok=False, error=str(e), outcome=e.data)
            raise
        except Exception as e:  # noqa: BLE001 - an unexpected error fails the action, typed
            j.step_ended(rec.id, step.name, ok=False, error=f"{type(e).__name__}: {e}")
            raise ActionFailed(f"step {step.name}: {type(e).__name__}: {e}", PERMANENT) from e
        testing_crash_point(f"{rec.action}/{step.name}/after")
        j.step_ended(rec.id, step.name, ok=True, outcome=out)
        run.outputs[step.name] = out


def abort(ctx: ActionContext, record: ActionRecord, why: str) -> None:
    """Mark an action aborted (approval expired, superseded) and say why."""
    ctx.journal.set_action(record.id, ACTION_ABORTED, error=why)
    Run(ctx=ctx, record=record).tell("aborted", f"{record.action} aborted: {why}")
