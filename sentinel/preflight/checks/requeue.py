"""Slurm requeue works for the job's partition: a tiny requeueable job runs, is requeued,
and runs again.

Through the controller's Slurm client: ``sbatch --requeue`` of ``sleep`` in
``preflight.partition``, wait until it runs, ``scontrol requeue``, wait until it runs
again with a higher restart count (Slurm's own record of the requeue), then ``scancel``
it whatever happened. A pending reason that cannot clear by itself (the partition is
down, the job can never fit) fails at once instead of waiting for the timeout.
"""

from __future__ import annotations

from typing import Any

from sentinel.preflight.checks.base import Context, wait_until
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "Slurm requeue works for the job's partition"
JOB_NAME = "sentinel-preflight-requeue"
# The test job sleeps longer than the check can take; it is cancelled at the end, and
# Slurm ends it after --time minutes if this process dies first.
SLEEP_SECONDS = 3600
TIME_LIMIT_MINUTES = 10
# Pending reasons (squeue %r) that waiting does not clear: a person must act.
HOPELESS = ("PartitionDown", "PartitionInactive", "PartitionNodeLimit", "PartitionTimeLimit",
            "PartitionConfig", "BadConstraints", "InvalidAccount", "InvalidQOS",
            "AccountNotAllowed", "QOSNotAllowed")


def _where(job: Any) -> str:
    return f"state {job.state}" + (f", reason {job.reason}" if job.reason and
                                   job.reason != "None" else "")


def _wait_running(ctx: Context, job_id: str, after_restarts: int, timeout: float,
                  ev: dict[str, Any], key: str, what: str) -> Result | None:
    """Wait until the job runs with more than ``after_restarts`` restarts; None when it does."""
    last: dict[str, Any] = {}

    def running() -> bool:
        j = ctx.slurm.job(job_id) if ctx.slurm is not None else None
        last["job"] = j
        if j is None:
            return False
        if j.reason in HOPELESS:
            return True  # stop waiting: judged below
        return bool(j.running and j.restarts > after_restarts)

    t = ctx.monotonic()
    wait_until(ctx, running, timeout)
    j = last.get("job")
    ev[f"{key}_wait_seconds"] = round(ctx.monotonic() - t, 1)
    if j is None:
        return problem(f"test job {job_id} vanished from squeue before it had {what}", **ev)
    if j.running and j.restarts > after_restarts:
        ev[f"{key}_on"] = list(j.nodes)
        return None
    if j.reason in HOPELESS:
        return problem(f"test job {job_id} cannot run in its partition ({_where(j)}): a "
                       "person must fix the partition first", **ev)
    return problem(f"test job {job_id} had not {what} after {timeout:.0f} s ({_where(j)}, "
                   f"{j.restarts} restart(s)); preflight.requeue_timeout_seconds", **ev)


def _test(ctx: Context, slurm: Any, options: list[str], ev: dict[str, Any],
          job: list[str]) -> Result:
    """Submit, wait, requeue, wait; ``job`` receives the id as soon as there is one."""
    p = ctx.setup.preflight
    job_id = slurm.submit(options, f"sleep {SLEEP_SECONDS}")
    job.append(job_id)
    ev["job_id"] = job_id
    bad = _wait_running(ctx, job_id, -1, p.requeue_timeout_seconds, ev, "start", "started")
    if bad is not None:
        return bad
    first = slurm.job(job_id)
    before = first.restarts if first is not None else 0
    t = ctx.monotonic()
    slurm.requeue(job_id)
    bad = _wait_running(ctx, job_id, before, p.requeue_timeout_seconds, ev, "rerun",
                        "run again")
    if bad is not None:
        return bad
    ev["requeue_to_running_seconds"] = round(ctx.monotonic() - t, 1)
    return ok(f"test job {job_id} ran on {','.join(ev['start_on'])}, was requeued and ran "
              f"again on {','.join(ev['rerun_on'])} after "
              f"{ev['requeue_to_running_seconds']:.1f} s", **ev)


def check(ctx: Context) -> Result:
    """Submit, requeue and cancel a tiny requeueable job in the job's partition."""
    from sentinel.controller.slurm import SlurmError

    if ctx.slurm is None:
        return skipped(ctx.no_slurm)
    p = ctx.setup.preflight
    partition = p.partition
    options = ["--requeue", f"--job-name={JOB_NAME}", "--nodes=1", "--ntasks=1",
               f"--time={TIME_LIMIT_MINUTES}", "--output=/dev/null", "--open-mode=append",
               *([f"--partition={partition}"] if partition else []), *p.requeue_sbatch_args]
    ev: dict[str, Any] = {"partition": partition or "(Slurm's default)", "sbatch": options}
    job: list[str] = []
    try:
        res = _test(ctx, ctx.slurm, options, ev, job)
    except SlurmError as e:
        res = problem(f"Slurm refused the test: {e}", **ev)
    finally:
        # Whatever happened (an exception included), the test job goes.
        cancel: dict[str, Any] = {}
        if job:
            try:
                ctx.slurm.cancel(job[0])
                cancel["cancelled"] = True
            except SlurmError as e:
                cancel.update(cancelled=False, cancel_error=str(e))
    res.evidence.update(cancel)
    if cancel.get("cancelled") is False:
        res = problem(f"{res.summary}; and the test job {job[0]} could not be cancelled "
                      f"(scancel {job[0]}): {cancel['cancel_error']}", **res.evidence)
    return res
