"""rollback_skip: roll a job back to a verified checkpoint before a loss spike, skip its batches.

Plan: from the spike's steps (``step_start - margin .. step_end + margin``, the margin
widened on a second attempt), the newest verified checkpoint at or before the first
skipped step, the batch ids those steps trained on in the spike's own timeline (the step
stream may hold several after an earlier rollback), less those the skip plan skips
already; the pre-spike loss trend (:mod:`sentinel.controller.trend`); a request id
fixed in the plan, so a crash or a retry asks for the same rollback, never a second one.

Steps, for a job that runs a rollback handler: ``pin`` the checkpoint for the incident,
``submit`` the signed request and wait for the job's answer. For a job that does not
(``jobs[].rollback_handler: false``, or no token or PID files in its run directory):
``pin``, ``hold`` (``scontrol requeuehold``: the job stops and stays pending), write the
``skip_plan`` and abandon the newer checkpoints while nothing runs, ``release`` it; it
restarts from the checkpoint with the skips.

Verify: the job's records after the rollback start at the checkpoint, never train a
skipped batch, show no spike again, and once past the skipped batches, a window of
steps is back on the pre-spike trend within ``controller.verify_steps`` steps of the
spike's end. The incident's pin is released when that passes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import sentinel.train.request as rq
from sentinel.controller.actions.base import ActionContext, Run, Step
from sentinel.controller.model import PERMANENT, TRANSIENT, ActionFailed, Incident
from sentinel.controller.policy import Decision, spike_class
from sentinel.controller.slurm import Job, Slurm, slurm_failures
from sentinel.controller.timeline import TimelineError, after, batches, lineage, newest, to_ranges
from sentinel.controller.trend import Trend, TrendError, fit, judge
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint

log = logging.getLogger(__name__)

REQUESTED_BY = "sentinel controller"
# How often the job's answer file is looked for; the job answers at its next step.
ANSWER_POLL_S = 0.25
# Slurm job states in which the job's processes may still run (and report, and save).
_ALIVE = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING",
          "STAGE_OUT", "RESIZING")


def _points(ctx: ActionContext, job: str) -> list[StepPoint]:
    try:
        return ctx.steps_of(job)
    except KeyError:
        raise ActionFailed(f"job {job!r} has no step stream to read (jobs[].agent, or an "
                           "agent Prometheus knows)") from None


class RollbackSkip:
    """Roll a job back past a loss spike and skip the batches that caused it."""

    name: ClassVar[str] = "rollback_skip"

    # -- plan ------------------------------------------------------------------------
    def plan(self, ctx: ActionContext, incident: Incident, finding: Finding,
             decision: Decision) -> dict[str, Any]:
        """Choose the checkpoint, the batches to skip and the trend; change nothing."""
        spec = ctx.job(finding.job)
        if finding.step_start is None:
            raise ActionFailed(f"finding {finding.key} names no steps: nothing to roll back past")
        run_dir = Path(spec.run_dir)
        ckpt_dir = Path(spec.checkpoint_dir) if spec.checkpoint_dir else run_dir / "checkpoints"
        attempt = int(decision.params.get("attempt", 1))
        margin = int(decision.params.get("skip_margin", ctx.policy.skip_margin_steps)) * int(
            decision.params.get("widen", 1))
        start = finding.step_start
        end = finding.step_end if finding.step_end is not None else start
        lo, hi = max(0, start - margin), end + margin
        why_not = "jobs[].rollback_handler is false" if not spec.rollback_handler \
            else rq.handler_missing(run_dir)
        if why_not and ctx.slurm is None:
            raise ActionFailed(f"job {spec.name} runs no rollback handler ({why_not}) and no "
                               "Slurm is configured to restart it (controller.scheduler)")
        points = _points(ctx, spec.name)
        try:
            chain = lineage(points, start, finding.time_start)
            trend = fit(chain, lo)
        except (TimelineError, TrendError) as e:
            raise ActionFailed(f"job {spec.name}: {e}") from None
        request_id = f"{incident.id}-r{attempt}"
        to_step, skip = self._target_and_skip(run_dir, ckpt_dir, request_id, chain, lo, hi)
        top = newest(points)
        current = max(top.step if top else start, end)
        lost = current - to_step
        if lost > ctx.policy.max_rollback_steps:
            raise ActionFailed(
                f"rolling job {spec.name} back to checkpoint {to_step} would throw away {lost} "
                f"steps (from step {current}), more than policy.max_rollback_steps "
                f"({ctx.policy.max_rollback_steps}): a person must decide")
        return {
            "job": spec.name, "run_dir": str(run_dir), "checkpoint_dir": str(ckpt_dir),
            "incident": incident.id, "attempt": attempt, "request_id": request_id,
            "handler": not why_not, "no_handler_reason": why_not or "",
            "slurm_job": spec.slurm_job or spec.name,
            "spike": {"step_start": start, "step_end": end, "class": spike_class(finding)},
            "margin": margin, "skip_steps": [lo, hi], "to_step": to_step,
            "current_step": current, "steps_lost": lost,
            "skip": [list(r) for r in skip], "skipped_batches": sum(b - a for a, b in skip),
            "trend": trend.to_dict(), "verify_steps": ctx.config.verify_steps,
        }

    @staticmethod
    def _target_and_skip(run_dir: Path, ckpt_dir: Path, request_id: str,
                         chain: list[StepPoint], lo: int, hi: int
                         ) -> tuple[int, list[tuple[int, int]]]:
        """Return (checkpoint, skip ranges): those of a request already made under the id."""
        try:
            prior = rq.prior_request(run_dir, request_id)
            if prior is not None and prior["status"] in ("pending", "done") \
                    and prior["to_step"] is not None:
                # A retry after a transient failure, or a restart: the same rollback.
                return int(prior["to_step"]), [(int(a), int(b)) for a, b in prior["skip"]]
            to_step = rq.choose_target(ckpt_dir, before_step=lo)
            skip = to_ranges(batches(chain, lo, hi), minus=rq.skip_ranges(run_dir))
        except (rq.RollbackError, TimelineError) as e:
            raise ActionFailed(str(e)) from None
        if not skip:
            raise ActionFailed(f"every batch of steps {lo}-{hi} is skipped already: another "
                               "rollback would change nothing")
        return to_step, skip

    def describe(self, plan: dict[str, Any]) -> str:
        """Return the plan in one sentence."""
        ranges = ", ".join(f"{a}-{b - 1}" for a, b in plan["skip"])
        how = "in-process" if plan["handler"] else \
            f"by restarting Slurm job {plan['slurm_job']} ({plan['no_handler_reason']})"
        return (f"roll job {plan['job']} back from step {plan['current_step']} to checkpoint "
                f"{plan['to_step']} ({plan['steps_lost']} steps lost) and skip batches "
                f"{ranges} ({plan['skipped_batches']} batches), {how}")

    # -- steps -----------------------------------------------------------------------
    def steps(self, plan: dict[str, Any]) -> list[Step]:
        """Return pin + submit (a rollback handler), or pin, hold, skip_plan, release."""
        pin = Step("pin", self._pin, self._pinned)
        if plan["handler"]:
            return [pin, Step("submit", self._submit, self._answered)]
        return [pin, Step("hold", self._hold, self._held),
                Step("skip_plan", self._write_plan),
                Step("release", self._release, self._released)]

    @staticmethod
    def _pin(run: Run) -> dict[str, Any]:
        p = run.plan
        try:
            rq.pin(p["checkpoint_dir"], p["to_step"], p["incident"])
        except rq.RollbackError as e:
            # Pruned since the plan (the job saves on): a retry plans again.
            cls = TRANSIENT if "no such checkpoint" in str(e) else PERMANENT
            raise ActionFailed(f"cannot pin checkpoint {p['to_step']}: {e}", cls) from None
        released = _release_closed_pins(run)
        run.tell("pinned", f"checkpoint {p['to_step']} of job {p['job']} pinned for incident "
                 f"{p['incident']}: retention keeps it until the incident is over")
        return {"pinned": p["to_step"], "released_pins": released}

    @staticmethod
    def _pinned(run: Run) -> dict[str, Any] | None:
        p = run.plan
        try:
            held = rq.pins(p["checkpoint_dir"]).get(p["incident"])
        except rq.RollbackError:
            return None
        return {"pinned": held} if held == p["to_step"] else None

    def _submit(self, run: Run) -> dict[str, Any]:
        p = run.plan
        rid = p["request_id"]
        try:
            sub = rq.submit(p["run_dir"], p["job"], p["to_step"],
                            [(a, b) for a, b in p["skip"]], request_id=rid,
                            requested_by=REQUESTED_BY, signal=False,
                            reason=f"incident {p['incident']}: loss spike at steps "
                                   f"{p['spike']['step_start']}-{p['spike']['step_end']}")
        except rq.RollbackError as e:
            raise ActionFailed(f"cannot submit rollback request {rid}: {e}") from None
        how = _signal(p["run_dir"]) if sub.status == "pending" else f"already {sub.status}"
        run.tell("submitted", f"rollback request {rid} to checkpoint {p['to_step']} written "
                 f"to the run directory of {p['job']}; {how}")
        result = _await_answer(run, rid)
        return _outcome(run, result)

    @staticmethod
    def _answered(run: Run) -> dict[str, Any] | None:
        p = run.plan
        try:
            if rq.status(p["run_dir"], p["request_id"]) != "done":
                return None  # run the step again: submit is idempotent for the id
            result = rq.read_result(p["run_dir"], p["request_id"])
        except rq.RollbackError:
            return None
        return _outcome(run, result) if result else None

    @staticmethod
    @slurm_failures
    def _hold(run: Run) -> dict[str, Any]:
        sched, jid = _scheduler(run)
        sched.requeue_hold(jid)
        job = _wait_stopped(run, sched, jid)
        run.tell("held", f"Slurm job {jid} requeued and held ({job.state}): its processes "
                 "stopped, so the skip plan and the checkpoints can be changed")
        return {"slurm_job": jid, "stopped_at": run.ctx.clock()}

    @staticmethod
    @slurm_failures
    def _held(run: Run) -> dict[str, Any] | None:
        sched, jid = _scheduler(run)
        job = sched.job(jid)
        if job is None or job.state in _ALIVE or "held" not in job.reason.lower():
            return None
        return {"slurm_job": jid, "stopped_at": run.ctx.clock()}

    @staticmethod
    def _write_plan(run: Run) -> dict[str, Any]:
        p = run.plan
        why = f"sentinel incident {p['incident']}: rollback to {p['to_step']} ({p['request_id']})"
        try:
            added = rq.add_skips(p["run_dir"], [(a, b) for a, b in p["skip"]],
                                 added_by=REQUESTED_BY, reason=why)
            gone = rq.abandon_after(p["checkpoint_dir"], p["to_step"], why)
        except rq.RollbackError as e:
            raise ActionFailed(str(e)) from None
        run.tell("skip_plan", f"skip plan of {p['job']} has batches "
                 f"{', '.join(f'{a}-{b - 1}' for a, b in p['skip'])}; checkpoints after "
                 f"{p['to_step']} abandoned ({', '.join(map(str, gone)) or 'none newer'})")
        return {"added": added, "abandoned": gone}

    @staticmethod
    @slurm_failures
    def _release(run: Run) -> dict[str, Any]:
        sched, jid = _scheduler(run)
        sched.release(jid)
        run.tell("released", f"Slurm job {jid} released: it restarts from checkpoint "
                 f"{run.plan['to_step']} with the skips")
        return {"released": jid}

    @staticmethod
    @slurm_failures
    def _released(run: Run) -> dict[str, Any] | None:
        sched, jid = _scheduler(run)
        job = sched.job(jid)
        if job is None or "held" in job.reason.lower():
            return None
        return {"released": jid}

    # -- verify ----------------------------------------------------------------------
    def verify(self, run: Run) -> dict[str, Any]:
        """Follow the step stream until the loss is back on trend, spikes again, or time ends."""
        ctx, p = run.ctx, run.plan
        marker = float(run.outputs["submit"]["answered_at"] if p["handler"]
                       else run.outputs["hold"]["stopped_at"])
        trend = Trend.from_dict(p["trend"])
        skip = [(int(a), int(b)) for a, b in p["skip"]]
        deadline = ctx.clock() + ctx.config.verify_timeout_seconds
        told = False
        while True:
            resumed = after(_points(ctx, p["job"]), marker)
            v = judge(trend, resumed, to_step=p["to_step"], skip=skip,
                      spike_end=p["spike"]["step_end"], verify_steps=p["verify_steps"])
            if resumed and not told:
                told = True
                run.tell("resumed", f"job {p['job']} resumed at step {resumed[0].step} "
                         f"(batch {resumed[0].batch}); verifying its loss")
            if v.state == "passed":
                _unpin(run)
                return dict(v.data, summary=v.summary,
                            resumed_time=resumed[0].time if resumed else None)
            if v.state == "failed":
                raise ActionFailed(v.summary, PERMANENT, {"verify": v.data})
            if ctx.clock() > deadline:
                raise ActionFailed(f"no verdict within {ctx.config.verify_timeout_seconds:.0f} s "
                                   f"(controller.verify_timeout_seconds): {v.summary}",
                                   TRANSIENT)
            if ctx.sleep(min(ctx.config.interval_seconds, 5.0)):
                raise ActionFailed("the controller is stopping; verified again at its next "
                                   "start", TRANSIENT)


# -- helpers (module level: the step callables take only the Run) -----------------------
def _signal(run_dir: str) -> str:
    """Signal this host's ranks if allowed; say how the job will find the request."""
    pids = rq.job_pids(run_dir)
    if not pids:
        return "no rank of the job on this host to signal: it finds the request within " \
               "its poll interval"
    try:
        signalled, missing = rq.signal_job(run_dir, pids)
    except rq.RollbackError as e:
        return f"not signalled ({e}): it finds the request within its poll interval"
    gone = f"; PIDs {missing} are not running" if missing else ""
    return f"signalled PID(s) {', '.join(map(str, signalled)) or 'none'}{gone}"


def _await_answer(run: Run, request_id: str) -> dict[str, Any]:
    """Wait for the job's result file; no answer in time is a transient failure."""
    ctx, p = run.ctx, run.plan
    deadline = ctx.clock() + ctx.config.rollback_answer_seconds
    while True:
        try:
            result = rq.read_result(p["run_dir"], request_id)
            state = rq.status(p["run_dir"], request_id) if result is None else "answered"
        except rq.RollbackError as e:
            raise ActionFailed(str(e)) from None
        if result is not None:
            return result
        if state == "rejected":
            raise ActionFailed(f"the job rejected request {request_id} (its signature does not "
                               "match the run's token: was the job restarted with a new one?)")
        if ctx.clock() > deadline:
            raise ActionFailed(f"job {p['job']} did not answer request {request_id} within "
                               f"{ctx.config.rollback_answer_seconds:.0f} s "
                               "(controller.rollback_answer_seconds); it stays pending",
                               TRANSIENT)
        if ctx.sleep(ANSWER_POLL_S):
            raise ActionFailed("the controller is stopping; the request stays pending",
                               TRANSIENT)


def _outcome(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    """Turn the job's result into the step's outcome, or fail with the job's reason."""
    p = run.plan
    if result.get("status") != "done":
        raise ActionFailed(f"job {p['job']} refused rollback request {p['request_id']}: "
                           f"{result.get('reason', 'no reason given')}", PERMANENT,
                           {"result": result})
    run.tell("acknowledged", f"job {p['job']} rolled back from step {result.get('from_step')} "
             f"to {result.get('to_step')} in {float(result.get('total_s', 0.0)):.2f} s")
    return {"request_id": p["request_id"], "status": "done", "answered_at": result["time"],
            "from_step": result.get("from_step"), "to_step": result.get("to_step"),
            "restore_s": result.get("total_s")}


def _scheduler(run: Run) -> tuple[Slurm, str]:
    sched: Slurm | None = run.ctx.slurm
    if sched is None:
        raise ActionFailed("no Slurm configured (controller.scheduler): cannot restart job "
                           f"{run.plan['job']}")
    job = sched.job(run.plan["slurm_job"])
    if job is None:
        raise ActionFailed(f"Slurm has no job {run.plan['slurm_job']!r} (jobs[].slurm_job)")
    return sched, job.id


def _wait_stopped(run: Run, sched: Slurm, jid: str) -> Job:
    """Wait until the held job's processes are gone (not running, completing...)."""
    ctx = run.ctx
    deadline = ctx.clock() + ctx.config.requeue_confirm_seconds
    while True:
        job = sched.job(jid)
        if job is not None and job.state not in _ALIVE:
            return job
        if ctx.clock() > deadline:
            raise ActionFailed(f"Slurm job {jid} still {job.state if job else 'unknown'} "
                               f"{ctx.config.requeue_confirm_seconds:.0f} s after requeuehold "
                               "(controller.requeue_confirm_seconds)", TRANSIENT)
        if ctx.sleep(1.0):
            raise ActionFailed("the controller is stopping", TRANSIENT)


def _unpin(run: Run) -> None:
    p = run.plan
    try:
        rq.unpin(p["checkpoint_dir"], p["incident"])
    except rq.RollbackError as e:
        log.warning("incident %s: cannot unpin checkpoint %s: %s", p["incident"], p["to_step"], e)


def _release_closed_pins(run: Run) -> list[str]:
    """Unpin checkpoints of this job held for incidents that are over.

    A verified rollback unpins its own; an escalated incident keeps its pin for the person
    who takes it over, until the job's next rollback.
    """
    p = run.plan
    released = []
    try:
        for holder in rq.pins(p["checkpoint_dir"]):
            inc = run.ctx.journal.incident(holder) if holder != p["incident"] else None
            if inc is not None and not inc.open:
                rq.unpin(p["checkpoint_dir"], holder)
                released.append(holder)
    except rq.RollbackError as e:
        log.warning("job %s: cannot release old pins: %s", p["job"], e)
    return released
