"""Burn in a node through Slurm and settle it: back to the pool, or kept drained with why.

The recipe (a drained node accepts no job, not even in a reservation):

1. ``reserve``: a maintenance reservation ``sentinel-burnin-NODE`` on the node
   (``Flags=MAINT,IGNORE_JOBS``, for the controller's user), so that nothing else lands
   there once it is resumed;
2. ``resume``: only if the node is drained by sentinel (reason ``sentinel: ...``); a free
   node needs nothing, a node drained by anyone else is never touched;
3. ``run``: ``controller.burnin_command`` (``srun --reservation=... -w NODE ... sentinel
   burnin --json``) with a timeout; its stdout is read with ``BurninReport.from_dict``;
4. ``verdict``: a failing report drains the node with ``sentinel: burn-in failed: <GPU
   verdicts> [incident ID]`` (unless someone else drained it meanwhile);
5. ``release``: delete the reservation; a node that passed is back in the pool.

spare_swap runs the same steps (:func:`burnin_steps`) on the node it drained. Every
step that writes reads the node or reservation first and writes only what is missing,
so a step run again after a crash changes nothing twice; ``run`` has no check (a burn-in
changes nothing in Slurm, and one cut short by a crash has no result to keep).
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
from typing import TYPE_CHECKING, Any, ClassVar

from sentinel.controller.actions.base import ActionContext, Run, Step
from sentinel.controller.model import PERMANENT, ActionFailed, Incident
from sentinel.controller.slurm import (
    BURNIN_FAILED_PREFIX,
    Slurm,
    classify,
    drain_reason,
    owned,
    slurm_failures,
)

if TYPE_CHECKING:
    from sentinel.burnin.report import BurninReport
    from sentinel.controller.journal import Journal
    from sentinel.controller.policy import Decision
    from sentinel.rules.finding import Finding

RESERVATION_PREFIX = "sentinel-burnin-"
PLACEHOLDERS = ("node", "reservation", "minutes")
# Step names; spare_swap runs the same steps (one source), so the names are shared.
RESERVE, RESUME, RUN, VERDICT, RELEASE = ("burnin_reserve", "burnin_resume", "burnin_run",
                                          "burnin_verdict", "burnin_release")
STDERR_TAIL = 1000


def slurm_of(ctx: ActionContext) -> Slurm:
    """Return the Slurm client, or fail permanently: Slurm actions need a scheduler."""
    if ctx.slurm is None:
        raise ActionFailed("no Slurm client: the controller runs without a scheduler, so it "
                           "cannot drain, reserve or burn in nodes")
    slurm: Slurm = ctx.slurm
    return slurm


def reservation_name(node: str) -> str:
    """Return the maintenance reservation sentinel makes to burn in ``node``."""
    return f"{RESERVATION_PREFIX}{node}"


def fill_command(template: list[str], node: str, reservation: str, minutes: int,
                 key: str = "controller.burnin_command") -> list[str]:
    """Fill ``{node}``, ``{reservation}``, ``{minutes}`` in the burn-in argv template.

    ``key`` names the setting the template came from, in the errors.
    """
    values = {"node": node, "reservation": reservation, "minutes": str(minutes)}
    out = []
    for arg in template:
        for k, v in values.items():
            arg = arg.replace("{" + k + "}", v)
        left = re.findall(r"\{[A-Za-z_]+\}", arg)
        if left:
            raise ActionFailed(
                f"{key}: unknown placeholder {left[0]} in {arg!r} (valid: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")")
        out.append(arg)
    if not out:
        raise ActionFailed(f"{key} is empty (valid: an argv such as srun -w "
                           "{node} ... sentinel burnin --json)")
    return out


def report_document(stdout: str) -> dict[str, Any]:
    """Return the report object in a burn-in's stdout.

    ``sentinel burnin --json`` prints JSON lines whose last, the ``verdict`` event, carries
    the whole report under ``report``; a stdout that is one JSON report is read as is.
    """
    text = stdout.strip()
    for line in reversed(text.splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("report"), dict):
            inner: dict[str, Any] = obj["report"]
            return inner
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "gpus" in doc:
        return doc
    raise ValueError("no burn-in report in its output (expected `sentinel burnin --json`: "
                     "a last line with the report under 'report')")


def read_report(stdout: str) -> BurninReport:
    """Read the report a burn-in printed (``BurninReport.from_dict``)."""
    from sentinel.burnin.report import BurninReport

    return BurninReport.from_dict(report_document(stdout))


def verdict_text(report: BurninReport) -> str:
    """Return the failing GPUs' verdicts, e.g. ``GPU 0 LOW_FLOPS, GPU 3 THROTTLED``."""
    return ", ".join(f"GPU {v.cuda_index} {v.verdict.value}" for v in report.verdicts
                     if not v.ok)


def burnin_plan(ctx: ActionContext, node: str, incident: str) -> dict[str, Any]:
    """Return the burn-in part of a plan (the same for burnin and spare_swap)."""
    cfg = ctx.config
    minutes = max(1, math.ceil(cfg.burnin_timeout_seconds / 60.0))
    res = reservation_name(node)
    return {
        "node": node, "reservation": res, "incident": incident,
        "users": [pwd.getpwuid(os.getuid()).pw_name],
        "command": fill_command(list(cfg.burnin_command), node, res, minutes),
        "timeout": cfg.burnin_timeout_seconds,
    }


def refuse_if_not_ours(ctx: ActionContext, node: str) -> None:
    """Fail permanently when the node is drained by someone else or failed a burn-in."""
    n = slurm_of(ctx).node(node)
    if n.drained and not owned(n):
        by = f" by {n.reason_user}" if n.reason_user else ""
        raise ActionFailed(f"{node} is drained{by} with reason {n.reason!r}, not by sentinel: "
                           "sentinel never touches it (owner scope)")
    if n.drained and n.reason.startswith(BURNIN_FAILED_PREFIX):
        raise ActionFailed(f"{node} failed a burn-in before ({n.reason!r}): it stays drained "
                           "for a person (repair, then `scontrol update NodeName="
                           f"{node} State=RESUME`)")


# -- the steps (shared with spare_swap) ---------------------------------------------


def _bp(run: Run) -> dict[str, Any]:
    b: dict[str, Any] = run.plan["burnin"]
    return b


@slurm_failures
def _reserve(run: Run) -> dict[str, Any]:
    b, slurm = _bp(run), slurm_of(run.ctx)
    r = slurm.reservation(b["reservation"])
    if r is not None:
        if b["node"] not in r.nodes:
            raise ActionFailed(f"reservation {r.name} exists on {', '.join(r.nodes)}, not "
                               f"{b['node']}: someone else made it; not touched")
        return {"reservation": r.name, "created": False}
    slurm.create_reservation(b["reservation"], [b["node"]], b["users"])
    run.tell("reserved", f"{b['node']}: maintenance reservation {b['reservation']} made")
    return {"reservation": b["reservation"], "created": True}


@slurm_failures
def _reserve_check(run: Run) -> dict[str, Any] | None:
    b = _bp(run)
    r = slurm_of(run.ctx).reservation(b["reservation"])
    return {"reservation": r.name} if r is not None and b["node"] in r.nodes else None


@slurm_failures
def _resume(run: Run) -> dict[str, Any]:
    b, slurm = _bp(run), slurm_of(run.ctx)
    n = slurm.node(b["node"])
    if not n.drained:
        return {"resumed": False, "state": n.describe()}
    if not owned(n):
        raise ActionFailed(f"{n.name} was drained by someone else ({n.reason!r}): not resumed "
                           "(owner scope)")
    slurm.resume(n.name)
    run.tell("resumed", f"{n.name} resumed inside {b['reservation']} for its burn-in "
             f"(reason was {n.reason!r})")
    return {"resumed": True, "reason_was": n.reason}


@slurm_failures
def _resume_check(run: Run) -> dict[str, Any] | None:
    n = slurm_of(run.ctx).node(_bp(run)["node"])
    return None if n.drained else {"resumed": True, "state": n.describe()}


@slurm_failures
def _run_burnin(run: Run) -> dict[str, Any]:
    b, slurm = _bp(run), slurm_of(run.ctx)
    run.tell("burnin", f"burn-in of {b['node']} started: {' '.join(b['command'])}")
    res = slurm.run(b["command"], timeout=float(b["timeout"]), check=False)
    try:
        report = read_report(res.stdout or "")
    except Exception as e:  # noqa: BLE001 - any unreadable output is the same failure
        err = (res.stderr or "").strip()[-STDERR_TAIL:]
        raise ActionFailed(f"burn-in of {b['node']} gave no report (exit code "
                           f"{res.returncode}): {e}; stderr: {err or '(empty)'}",
                           classify(err), {"exit_code": res.returncode}) from e
    if not report.verdicts:
        # A burn-in that saw no GPU passes by its own rules, but it is no evidence.
        raise ActionFailed(f"burn-in of {b['node']} tested no GPU (host {report.hostname}): "
                           "check the node's GPUs and CUDA_VISIBLE_DEVICES",
                           PERMANENT, {"exit_code": res.returncode})
    verdicts = {str(v.cuda_index): v.verdict.value for v in report.verdicts}
    out = {"ok": bool(report.ok), "verdicts": verdicts, "exit_code": res.returncode,
           "hostname": report.hostname, "finished_at": report.finished_at,
           "checked_at": run.ctx.clock(), "failed": "" if report.ok else verdict_text(report)}
    run.tell("burnin", f"burn-in of {b['node']}: "
             + ("passed" if report.ok else f"FAILED ({out['failed']})"), out)
    return out


def failed_reason(run: Run) -> str:
    """Return the drain reason of a node that failed its burn-in."""
    b = _bp(run)
    return drain_reason(f"burn-in failed: {run.outputs[RUN]['failed']}", b["incident"])


@slurm_failures
def _verdict(run: Run) -> dict[str, Any]:
    b, slurm = _bp(run), slurm_of(run.ctx)
    if run.outputs[RUN]["ok"]:
        return {"drained": False}
    n = slurm.node(b["node"])
    reason = failed_reason(run)
    if n.drained and not owned(n):
        run.tell("verdict", f"{n.name} failed its burn-in and was drained by someone else "
                 f"meanwhile ({n.reason!r}): left as it is")
        return {"drained": False, "left": n.reason}
    if not (n.drained and n.reason == reason):
        slurm.drain(n.name, reason)
    return {"drained": True, "reason": reason}


@slurm_failures
def _verdict_check(run: Run) -> dict[str, Any] | None:
    if run.outputs[RUN]["ok"]:
        return {"drained": False}
    n = slurm_of(run.ctx).node(_bp(run)["node"])
    reason = failed_reason(run)
    return {"drained": True, "reason": reason} if n.drained and n.reason == reason else None


@slurm_failures
def _release(run: Run) -> dict[str, Any]:
    b, slurm = _bp(run), slurm_of(run.ctx)
    if slurm.reservation(b["reservation"]) is not None:
        slurm.delete_reservation(b["reservation"])
    back = run.outputs[RUN]["ok"]
    run.tell("released", f"{b['node']}: reservation {b['reservation']} deleted; "
             + ("the node is back in the pool" if back else "the node stays drained"))
    return {"released": True, "in_pool": bool(back)}


@slurm_failures
def _release_check(run: Run) -> dict[str, Any] | None:
    gone = slurm_of(run.ctx).reservation(_bp(run)["reservation"]) is None
    return {"released": True, "in_pool": bool(run.outputs[RUN]["ok"])} if gone else None


def burnin_steps() -> list[Step]:
    """Return the burn-in steps; they read ``plan["burnin"]`` (see :func:`burnin_plan`)."""
    return [
        Step(RESERVE, _reserve, _reserve_check),
        Step(RESUME, _resume, _resume_check),
        Step(RUN, _run_burnin, None, pauses_on_breaker=False),
        Step(VERDICT, _verdict, _verdict_check),
        Step(RELEASE, _release, _release_check),
    ]


@slurm_failures
def settled(run: Run) -> dict[str, Any]:
    """Check the node is settled after its burn-in: in the pool (passed) or drained (failed)."""
    b, slurm = _bp(run), slurm_of(run.ctx)
    result = run.outputs[RUN]
    if slurm.reservation(b["reservation"]) is not None:
        raise ActionFailed(f"reservation {b['reservation']} still exists after the burn-in")
    n = slurm.node(b["node"])
    if result["ok"]:
        if n.drained and owned(n):
            raise ActionFailed(f"{n.name} passed its burn-in but is still drained by sentinel "
                               f"({n.reason!r})")
        where = "back in the pool" if not n.drained else \
            f"drained by someone else meanwhile ({n.reason!r})"
        return {"node": n.name, "burnin_ok": True, "state": n.describe(),
                "text": f"{n.name} passed its burn-in: {where}"}
    if not n.drained:
        raise ActionFailed(f"{n.name} failed its burn-in ({result['failed']}) but is not "
                           f"drained ({n.describe()})")
    return {"node": n.name, "burnin_ok": False, "state": n.describe(), "reason": n.reason,
            "text": f"{n.name} failed its burn-in ({result['failed']}): kept drained for a "
                    "person"}


def burnin_passes(journal: Journal, since: float) -> dict[str, float]:
    """Return ``{node: time}`` of the newest burn-in each node passed and was released after.

    Read from the journal's actions (burnin and spare_swap both run :func:`burnin_steps`):
    a node counts once its burn-in passed and its reservation was deleted.
    """
    out: dict[str, float] = {}
    for name in ("burnin", "spare_swap"):
        for rec in journal.actions(action=name, since=since):
            steps = (rec.outcome or {}).get("steps") or {}
            result, released = steps.get(RUN) or {}, steps.get(RELEASE)
            node = (rec.plan.get("burnin") or {}).get("node")
            at = result.get("checked_at")
            if node and released and result.get("ok") is True and isinstance(
                    at, (int, float)) and at >= since:
                out[node] = max(out.get(node, 0.0), float(at))
    return out


class Burnin:
    """Burn in a node that runs no followed job (a throttling node, say)."""

    name: ClassVar[str] = "burnin"

    @slurm_failures
    def plan(self, ctx: ActionContext, incident: Incident, finding: Finding,
             decision: Decision) -> dict[str, Any]:
        """Plan the burn-in of the finding's node; refuse a node that is not ours."""
        node = finding.node
        if not node:
            raise ActionFailed(f"{finding.kind} names no node: nothing to burn in")
        refuse_if_not_ours(ctx, node)
        n = slurm_of(ctx).node(node)
        if n.busy and not n.drained:
            raise ActionFailed(f"{node} runs jobs ({n.describe()}): a burn-in needs it free; "
                               "drain it first (spare_swap) or wait until it is idle")
        return {"node": node, "incident": incident.id, "was": n.describe(),
                "burnin": burnin_plan(ctx, node, incident.id)}

    def steps(self, plan: dict[str, Any]) -> list[Step]:
        """Reserve, resume if ours, run, drain on failure, release."""
        return burnin_steps()

    def verify(self, run: Run) -> dict[str, Any]:
        """Pass when the node is back in the pool; a failed burn-in goes to a person."""
        s = settled(run)
        if not s["burnin_ok"]:
            raise ActionFailed(s["text"], PERMANENT, s)
        return dict(s, summary=s["text"])

    def describe(self, plan: dict[str, Any]) -> str:
        """Say what the burn-in does."""
        b = plan.get("burnin", {})
        return (f"burn in {plan.get('node')} ({plan.get('was', '?')}) in reservation "
                f"{b.get('reservation')}: {' '.join(b.get('command', []))}; back to the pool "
                "if it passes, kept drained if not")

