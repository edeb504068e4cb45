"""Swap a ready spare in for a node with a hardware problem, requeue the job, burn the node in.

Steps (each journaled before and after; a controller killed between any two resumes):

1. ``drain``: ``State=DRAIN Reason="sentinel: <summary> [incident ID]"``. Check: the
   node is drained by sentinel.
2. ``move`` (the node runs a followed job): the job's explicit-node reservation gets the
   spare and loses the node; Slurm 22.05 has no ``Nodes+=``/``Nodes-=``, so the whole
   list is set, computed from the list read just before. Check: the spare is in and the
   node out. Its outcome keeps the job's restart count read before the requeue.
3. ``requeue``: ``scontrol requeue``, unless the restart count is already above the one
   recorded in ``move`` (then it was done). Check: the same comparison.
4. ``confirm``: wait (``controller.requeue_confirm_seconds``) until the job runs on a node
   set that has the spare and not the node. Reads only.
5. the burn-in of the drained node (burnin.py's steps, one source): reserve, resume
   (ours: the reason starts ``sentinel:``), run, drain on a failing verdict, release.

A node that runs no followed job is drained and burned in (no swap). ``verify``: the job
runs on the new set and the drained node is settled (back in the pool, or drained with
its verdict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sentinel.controller import spares  # a module: spares imports burnin's step names
from sentinel.controller.actions.base import ActionContext, Run, Step
from sentinel.controller.actions.burnin import (
    RUN,
    burnin_plan,
    burnin_steps,
    refuse_if_not_ours,
    settled,
    slurm_of,
)
from sentinel.controller.model import PERMANENT, TRANSIENT, ActionFailed, Incident
from sentinel.controller.slurm import Job, drain_reason, owned, slurm_failures

if TYPE_CHECKING:
    from sentinel.controller.policy import Decision
    from sentinel.rules.finding import Finding

DRAIN, MOVE, REQUEUE, CONFIRM = "drain", "move", "requeue", "confirm"
# Seconds between looks at a requeued job (slurmctld answers squeue in milliseconds).
CONFIRM_POLL_S = 1.0
JOB_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY")


@slurm_failures
def _drain(run: Run) -> dict[str, Any]:
    p, slurm = run.plan, slurm_of(run.ctx)
    n = slurm.node(p["node"])
    if n.drained and not owned(n):
        raise ActionFailed(f"{n.name} was drained by someone else meanwhile ({n.reason!r}): "
                           "not touched (owner scope)")
    if n.drained:
        return {"drained": True, "reason": n.reason, "was": n.describe()}
    slurm.drain(n.name, p["reason"])
    run.tell("drained", f"{n.name} drained: {p['reason']}")
    return {"drained": True, "reason": p["reason"], "was": n.describe()}


@slurm_failures
def _drain_check(run: Run) -> dict[str, Any] | None:
    n = slurm_of(run.ctx).node(run.plan["node"])
    return {"drained": True, "reason": n.reason} if owned(n) else None


def _job(run: Run) -> Job:
    j = slurm_of(run.ctx).job(run.plan["slurm_job"])
    if j is None:
        raise ActionFailed(f"Slurm job {run.plan['slurm_job']} ({run.plan['job']}) is gone")
    return j


@slurm_failures
def _move(run: Run) -> dict[str, Any]:
    p, slurm = run.plan, slurm_of(run.ctx)
    res = slurm.reservation(p["reservation"])
    if res is None:
        raise ActionFailed(f"reservation {p['reservation']} of job {p['job']} is gone")
    nodes = list(res.nodes)
    if p["spare"] not in nodes:
        spare = slurm.node(p["spare"])
        if not spare.free:
            raise ActionFailed(f"spare {spare.name} is no longer free ({spare.describe()}): "
                               "another spare on the next attempt", TRANSIENT)
    new = [n for n in nodes if n != p["node"]] + ([] if p["spare"] in nodes else [p["spare"]])
    if new != nodes:
        slurm.set_reservation_nodes(p["reservation"], new)
        run.tell("moved", f"reservation {p['reservation']}: {p['spare']} in, {p['node']} out")
    return {"nodes": new, "restarts_before": _job(run).restarts}


@slurm_failures
def _move_check(run: Run) -> dict[str, Any] | None:
    p = run.plan
    res = slurm_of(run.ctx).reservation(p["reservation"])
    if res is None or p["spare"] not in res.nodes or p["node"] in res.nodes:
        return None
    # The requeue comes after this step and has not started: this count is "before".
    return {"nodes": list(res.nodes), "restarts_before": _job(run).restarts}


@slurm_failures
def _requeue(run: Run) -> dict[str, Any]:
    before = int(run.outputs[MOVE]["restarts_before"])
    j = _job(run)
    if j.restarts > before:
        return {"requeued": True, "restarts": j.restarts, "already": True}
    if j.state in JOB_ENDED:
        raise ActionFailed(f"job {j.id} ended ({j.state}) before its requeue: nothing to "
                           "requeue; a person must resubmit it")
    if j.state == "PENDING":
        # Not started yet: it will start on the reservation's new node set by itself.
        return {"requeued": False, "restarts": j.restarts, "state": j.state}
    slurm_of(run.ctx).requeue(j.id)
    run.tell("requeued", f"job {j.id} ({run.plan['job']}) requeued (restart {before + 1})")
    return {"requeued": True, "restarts_before": before}


@slurm_failures
def _requeue_check(run: Run) -> dict[str, Any] | None:
    j = _job(run)
    before = int(run.outputs[MOVE]["restarts_before"])
    return {"requeued": True, "restarts": j.restarts} if j.restarts > before else None


@slurm_failures
def _confirm(run: Run) -> dict[str, Any]:
    p, ctx = run.plan, run.ctx
    start = ctx.clock()
    deadline = start + ctx.config.requeue_confirm_seconds
    while True:
        j = _job(run)
        if j.running and p["spare"] in j.nodes and p["node"] not in j.nodes:
            waited = ctx.clock() - start
            run.tell("running", f"job {j.id} runs again on {','.join(j.nodes)} "
                     f"({waited:.1f} s after the requeue step)")
            return {"nodes": list(j.nodes), "restarts": j.restarts, "waited_s": waited,
                    "running_at": ctx.clock()}
        if j.state in JOB_ENDED:
            raise ActionFailed(f"job {j.id} ended ({j.state}) instead of running again")
        if ctx.clock() >= deadline:
            raise ActionFailed(
                f"job {j.id} not running on the new node set within "
                f"{ctx.config.requeue_confirm_seconds:.0f} s (controller.requeue_confirm_seconds"
                f"): {j.state} on {','.join(j.nodes) or 'no node'}, reason {j.reason}",
                PERMANENT, {"state": j.state, "nodes": list(j.nodes)})
        if ctx.sleep(CONFIRM_POLL_S):
            raise ActionFailed("the controller is stopping while the job restarts; the next "
                               "attempt confirms it", TRANSIENT)


class SpareSwap:
    """Drain a failing node, swap a ready spare into its job, requeue, burn the node in."""

    name: ClassVar[str] = "spare_swap"

    @slurm_failures
    def plan(self, ctx: ActionContext, incident: Incident, finding: Finding,
             decision: Decision) -> dict[str, Any]:
        """Plan the swap; refuse a node not ours, a job without reservation, no ready spare."""
        node = finding.node
        if not node:
            raise ActionFailed(f"{finding.kind} names no node: nothing to swap")
        refuse_if_not_ours(ctx, node)
        slurm = slurm_of(ctx)
        plan: dict[str, Any] = {
            "node": node, "incident": incident.id, "swap": False,
            "reason": drain_reason(finding.summary, incident.id),
            "burnin": burnin_plan(ctx, node, incident.id)}
        found = spares.job_on_node(slurm, ctx.jobs, node, finding.job)
        if found is None:
            return plan
        spec, job = found
        plan.update(job=spec.name, slurm_job=job.id, reservation=spec.reservation)
        if not spec.reservation:
            raise ActionFailed(f"job {spec.name} runs on {node} but has no reservation "
                               f"configured (jobs[].reservation): no spare swap")
        res = slurm.reservation(spec.reservation)
        if res is None or node not in res.nodes:
            held = f"holds {','.join(res.nodes)}" if res is not None else "does not exist"
            raise ActionFailed(f"reservation {spec.reservation} of job {spec.name} {held}, "
                               f"not {node}: the swap would not move the job")
        if not job.requeue:
            raise ActionFailed(f"Slurm job {job.id} ({spec.name}) cannot be requeued "
                               "(submit it with sbatch --requeue)")
        nodes = slurm.nodes()
        ready = spares.SparePool(slurm, ctx.journal, ctx.config, ctx.clock).ready(
            exclude=[node], nodes=nodes)
        if not ready:
            raise ActionFailed(f"no ready spare (idle, feature {ctx.config.spare_feature!r}, "
                               "in no reservation, burned in within "
                               f"{ctx.config.burnin_max_age_hours:g} h) to take {node}'s place "
                               f"in job {spec.name}")
        plan.update(swap=True, spare=ready[0].node, restarts_at_plan=job.restarts,
                    job_nodes=list(job.nodes))
        return plan

    def steps(self, plan: dict[str, Any]) -> list[Step]:
        """Drain; move, requeue and confirm when swapping; then the burn-in steps."""
        steps = [Step(DRAIN, _drain, _drain_check)]
        if plan.get("swap"):
            steps += [Step(MOVE, _move, _move_check),
                      Step(REQUEUE, _requeue, _requeue_check),
                      Step(CONFIRM, _confirm, None, pauses_on_breaker=False)]
        return steps + burnin_steps()

    @slurm_failures
    def verify(self, run: Run) -> dict[str, Any]:
        """Check the job runs on the new set and the drained node is settled."""
        p = run.plan
        out: dict[str, Any] = {}
        if p.get("swap"):
            j = _job(run)
            if not (j.running and p["spare"] in j.nodes and p["node"] not in j.nodes):
                raise ActionFailed(f"job {j.id} is {j.state} on {','.join(j.nodes) or 'no node'}"
                                   f", not running on a set with {p['spare']} and without "
                                   f"{p['node']}", PERMANENT)
            out.update(job_nodes=list(j.nodes), job_state=j.state)
        s = settled(run)
        head = (f"job {p['job']} runs on {','.join(out['job_nodes'])} with spare {p['spare']}; "
                if p.get("swap") else f"{p['node']} ran no followed job (no swap); ")
        return dict(out, **s, summary=head + s["text"],
                    running_at=run.outputs.get(CONFIRM, {}).get("running_at"),
                    burnin_failed=run.outputs[RUN].get("failed", ""))

    def describe(self, plan: dict[str, Any]) -> str:
        """Say what the swap does."""
        if not plan.get("swap"):
            return (f"drain {plan.get('node')} ({plan.get('reason')}), which runs no followed "
                    "job, and burn it in")
        return (f"drain {plan.get('node')}, put spare {plan.get('spare')} in reservation "
                f"{plan.get('reservation')} in its place, requeue job {plan.get('job')} "
                f"(Slurm {plan.get('slurm_job')}), then burn {plan.get('node')} in")
