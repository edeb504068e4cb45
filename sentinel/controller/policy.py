"""The policy: ``decide(finding, history, now, config)``, a pure function.

It says what to do about one finding given what was done before, and why; refusals are
decisions too ("breaker open", "no ready spare", "cooldown") so people are told why
nothing happened. It never reads the clock, the journal or the world itself: the loop
builds :class:`History` from the journal and the world, and replay builds it from
recorded findings, so the same inputs always give the same decision.

The escalation ladders:
- loss spike: notify (a spike that heals fast) -> rollback_skip -> rollback_skip with a
  wider skip (the spike came back) -> a person;
- hardware (XID, ECC, row remap, lost GPU, burn-in failure, persistent throttle, a
  straggler node): spare_swap (drain, swap a ready spare in, requeue, burn in the drained
  node; a failed burn-in keeps it drained) -> a person;
- a throttling node no job runs on: burn-in -> a person.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.controller.config import PolicyConfig, mode_of
from sentinel.controller.model import (
    ACTION_ABORTED,
    ACTION_FAILED,
    ACTION_OBSERVED,
    ACTION_UNFINISHED,
    TRANSIENT,
)
from sentinel.rules.finding import Finding

# Refusal reasons (the ``refusal`` field of a Decision): a stable vocabulary for metrics,
# Slack and tests.
REFUSE_BREAKER = "breaker_open"
REFUSE_COOLDOWN = "cooldown"
REFUSE_BUDGET = "budget_exhausted"
REFUSE_NO_SPARE = "no_ready_spare"
REFUSE_DRAIN_RATE = "drain_rate"
REFUSE_IN_PROGRESS = "in_progress"
REFUSE_NO_TARGET = "no_target"
REFUSALS = (REFUSE_BREAKER, REFUSE_COOLDOWN, REFUSE_BUDGET, REFUSE_NO_SPARE, REFUSE_DRAIN_RATE,
            REFUSE_IN_PROGRESS, REFUSE_NO_TARGET)

# Findings about the node's hardware: the node leaves the job (spare swap).
HARDWARE_ACTIONS = ("spare_swap", "burnin")


@dataclass(frozen=True)
class PastAction:
    """An action the journal remembers, as the policy needs it."""

    action: str
    incident: str
    mode: str
    state: str
    time: float
    node: str | None = None
    job: str | None = None
    outcome_class: str | None = None
    attempt: int = 1

    def counts(self) -> bool:
        """Whether it was really attempted (acted, not observed, aborted or transient)."""
        if self.mode != "act" or self.state in (ACTION_OBSERVED, ACTION_ABORTED):
            return False
        return not (self.state == ACTION_FAILED and self.outcome_class == TRANSIENT)


@dataclass(frozen=True)
class History:
    """What the policy may know besides the finding: past actions and the world's state."""

    incident: str
    actions: tuple[PastAction, ...] = ()     # recent actions of every incident
    breaker_open: bool = False
    breaker_reason: str = ""
    nodes_total: int = 0                     # nodes in the cluster; 0 = unknown
    ready_spares: int = -1                   # ready spares; -1 = unknown (no scheduler)
    node_in_job: bool = False                # the finding's node runs a job the controller follows
    transient_failures: int = 0              # transient failures of the current attempt


@dataclass(frozen=True)
class Decision:
    """What to do about a finding, in which mode, and why."""

    action: str | None
    mode: str
    reason: str
    refusal: str | None = None
    escalate: bool = False
    trip_breaker: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form the journal and replay print."""
        return {"action": self.action, "mode": self.mode, "reason": self.reason,
                "refusal": self.refusal, "escalate": self.escalate,
                "trip_breaker": self.trip_breaker, "params": dict(self.params)}


def spike_class(f: Finding) -> str:
    """Return a loss spike's class; a NaN/Inf loss or grad norm is ``nonfinite``."""
    if f.evidence.get("nonfinite_steps"):
        return "nonfinite"
    return str(f.evidence.get("classification", "pending"))


def incident_group(f: Finding) -> str:
    """Return what makes two findings the same problem.

    A node's hardware findings (an XID, then the GPU lost, then a throttle) are one
    incident per node: one swap fixes them all. A job's loss spikes are one incident per
    job while it is open, so a spike that comes back after a rollback climbs the same
    ladder (the wider skip) instead of starting over. A job's throughput drop and the
    diagnosis that names its cause are one incident per job, or for the cluster when the
    drop names no job (the diagnosis explains the drop; one thread tells both), unless
    the cause is a node's hardware (above). Disk
    latency is one incident for the cluster's storage: a slow shared filesystem shows on
    every node at once, and a thousand nodes must not open a thousand threads. Anything
    else: the finding's key.
    """
    if f.node and f.suggested_action in HARDWARE_ACTIONS:
        return f"node/{f.node}"
    if f.kind == "loss_spike" and f.job:
        return f"loss/{f.job}"
    if f.kind in ("throughput_drop", "diagnosis"):
        # Prometheus-sourced drops name no job (the rule asks about the cluster): one
        # incident for the cluster's throughput then.
        return f"throughput/{f.job or 'cluster'}"
    if f.kind == "disk_latency":
        return "storage"
    return f"finding/{f.key}"


def joined_group(group: str, open_groups: Sequence[str]) -> str | None:
    """Return the open incident group a finding of ``group`` joins when its own has none.

    One drop is often seen twice: in the cluster's series on Prometheus (the rule names
    no job: ``throughput/cluster``) and in a job's own steps (``throughput/JOB``). While
    one of them is open, the other joins it: the cluster's drop joins a job's open
    incident when exactly one job's is open (with several, which one it is cannot be
    told), and a job's drop joins an open cluster incident.
    """
    if not group.startswith("throughput/"):
        return None
    if group == "throughput/cluster":
        jobs = [g for g in open_groups if g.startswith("throughput/") and g != group]
        return jobs[0] if len(jobs) == 1 else None
    return "throughput/cluster" if "throughput/cluster" in open_groups else None


def _candidate(f: Finding, h: History, cfg: PolicyConfig) -> tuple[str | None, str]:
    """Return (the action the finding calls for, why), before limits and budgets."""
    if f.kind == "loss_spike":
        cls = spike_class(f)
        if cls in cfg.rollback_on:
            return "rollback_skip", f"loss spike classified {cls}: rolling back costs fewer " \
                                    "steps than living with it"
        if cls == "pending":
            return None, "loss spike not classified yet: watching how it ends"
        return None, f"loss spike classified {cls}: it costs fewer steps than a rollback " \
                     "would (policy.rollback_on)"
    if f.state == "resolved":
        return None, "resolved"
    if f.suggested_action in HARDWARE_ACTIONS:
        if not f.node:
            return None, f"{f.kind} names no node: nothing to swap or burn in"
        if f.suggested_action == "spare_swap" or h.node_in_job:
            return "spare_swap", f"{f.kind} on {f.node}: the node leaves the job for a spare " \
                                 "and is burned in"
        return "burnin", f"{f.kind} on {f.node}, which runs no job: burn it in"
    if f.suggested_action == "rollback_skip":
        return "rollback_skip", f"{f.kind}: the detector asks for a rollback"
    return None, f"{f.kind}: nothing to do but tell ({f.suggested_action})"


def _in_cooldown(f: Finding, action: str, h: History, now: float, cfg: PolicyConfig
                 ) -> str | None:
    for a in h.actions:
        if a.action != action or a.incident == h.incident or not a.counts():
            continue
        if f.node and a.node == f.node and now - a.time < cfg.cooldown_node_seconds:
            left = cfg.cooldown_node_seconds - (now - a.time)
            return f"{action} on node {f.node} {now - a.time:.0f} s ago (incident " \
                   f"{a.incident}); cooldown ends in {left:.0f} s"
        if action != "spare_swap" and f.job and a.job == f.job \
                and now - a.time < cfg.cooldown_job_seconds:
            left = cfg.cooldown_job_seconds - (now - a.time)
            return f"{action} on job {f.job} {now - a.time:.0f} s ago (incident " \
                   f"{a.incident}); cooldown ends in {left:.0f} s"
    return None


def breaker_limit(nodes_total: int, cfg: PolicyConfig) -> int:
    """Return how many sentinel drains a breaker window may hold before the breaker trips."""
    limit = cfg.breaker_max_nodes
    if nodes_total > 0:
        limit = min(limit, max(1, math.floor(cfg.breaker_max_fraction * nodes_total)))
    return limit


def _drain_limits(f: Finding, h: History, now: float, cfg: PolicyConfig
                  ) -> tuple[str | None, str, str | None]:
    """Check the blast radius of one more drain: (refusal, why, breaker trip reason)."""
    drains = [a for a in h.actions if a.action == "spare_swap" and a.counts()
              and a.incident != h.incident]
    in_window = [a for a in drains if now - a.time < cfg.breaker_window_seconds]
    limit = breaker_limit(h.nodes_total, cfg)
    if len(in_window) + 1 > limit:
        why = (f"draining {f.node} would make {len(in_window) + 1} sentinel drains in "
               f"{cfg.breaker_window_seconds:.0f} s, over the limit of {limit} "
               f"(policy.breaker_max_nodes / breaker_max_fraction of {h.nodes_total or '?'} "
               "nodes): every action paused until `sentinel controller reset-breaker`")
        return REFUSE_BREAKER, why, why
    last_hour = [a for a in drains if now - a.time < 3600.0]
    if len(last_hour) >= cfg.max_drains_per_hour:
        return REFUSE_DRAIN_RATE, (f"{len(last_hour)} drains in the last hour already "
                                   f"(policy.max_drains_per_hour {cfg.max_drains_per_hour})"), None
    if h.node_in_job and h.ready_spares == 0:
        return REFUSE_NO_SPARE, (f"no ready spare (idle, staged, burned in recently) to "
                                 f"take {f.node}'s place: it stays in the job; a person must "
                                 "decide"), None
    return None, "", None


def decide(finding: Finding, history: History, now: float, config: PolicyConfig) -> Decision:
    """Decide what to do about ``finding``; pure: same inputs, same decision."""
    action, why = _candidate(finding, history, config)
    if action is None:
        return Decision(None, "observe", why)
    mode = mode_of(config, action)
    if history.breaker_open:
        return Decision(action, mode, f"{why}; refused: the circuit breaker is open "
                        f"({history.breaker_reason})", refusal=REFUSE_BREAKER)
    mine = [a for a in history.actions if a.incident == history.incident and a.action == action]
    running = [a for a in mine if a.state in ACTION_UNFINISHED]
    if running:
        return Decision(action, mode, f"{action} {running[-1].state} for this incident already",
                        refusal=REFUSE_IN_PROGRESS)
    attempts = sum(1 for a in mine if a.counts())
    last_transient = bool(mine) and mine[-1].state == ACTION_FAILED \
        and mine[-1].outcome_class == TRANSIENT
    if last_transient and history.transient_failures > config.transient_retries:
        return Decision(action, mode, f"{action} failed transiently "
                        f"{history.transient_failures} times: handing to a person",
                        refusal=REFUSE_BUDGET, escalate=True)
    if attempts >= config.max_attempts:
        return Decision(action, mode, f"{action} tried {attempts} times for this incident "
                        f"(policy.max_attempts {config.max_attempts}): handing to a person",
                        refusal=REFUSE_BUDGET, escalate=True)
    cool = _in_cooldown(finding, action, history, now, config)
    if cool:
        return Decision(action, mode, f"{why}; refused: {cool}", refusal=REFUSE_COOLDOWN)
    params: dict[str, Any] = {"attempt": attempts + 1}
    if action == "rollback_skip":
        params["skip_margin"] = config.skip_margin_steps
        params["widen"] = config.widen_factor if attempts >= 1 else 1
        if attempts >= 1:
            why = f"{why}; the spike came back after {attempts} rollback(s): wider skip " \
                  f"(x{config.widen_factor})"
    if action == "spare_swap":
        refusal, limit_why, trip = _drain_limits(finding, history, now, config)
        if refusal:
            return Decision(action, mode, f"{why}; refused: {limit_why}", refusal=refusal,
                            trip_breaker=trip, escalate=refusal == REFUSE_NO_SPARE)
        params["swap"] = history.node_in_job
    return Decision(action, mode, why, params=params)
