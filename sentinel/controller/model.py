"""Records the journal keeps: incidents, actions and their steps, and their states."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODES = ("observe", "ask", "act")

# Incident lifecycle. An incident groups the findings about one problem in one place:
# open -> acting (an action runs) -> verifying -> recovered, or escalated (handed to a
# person), or resolved (the finding went away with nothing left to do).
INCIDENT_OPEN = "open"
INCIDENT_ACTING = "acting"
INCIDENT_RECOVERED = "recovered"
INCIDENT_ESCALATED = "escalated"
INCIDENT_RESOLVED = "resolved"
INCIDENT_STATES = (INCIDENT_OPEN, INCIDENT_ACTING, INCIDENT_RECOVERED, INCIDENT_ESCALATED,
                   INCIDENT_RESOLVED)
INCIDENT_CLOSED_STATES = (INCIDENT_RECOVERED, INCIDENT_ESCALATED, INCIDENT_RESOLVED)

# Action lifecycle (the "intent, started, done, verified, failed, aborted", plus
# the states of the observe and ask modes).
ACTION_INTENT = "intent"            # journaled, not started: a crash here resumes it
ACTION_AWAITING = "awaiting_approval"  # ask mode: waits for `sentinel controller approve`
ACTION_STARTED = "started"          # steps running
ACTION_DONE = "done"                # every step done, verification pending
ACTION_VERIFIED = "verified"        # the world shows the fix worked
ACTION_FAILED = "failed"            # a step or the verification failed (outcome_class says how)
ACTION_ABORTED = "aborted"          # stopped on purpose (breaker, superseded, approval expired)
ACTION_OBSERVED = "observed"        # observe mode: planned and told, nothing done
ACTION_STATES = (ACTION_INTENT, ACTION_AWAITING, ACTION_STARTED, ACTION_DONE, ACTION_VERIFIED,
                 ACTION_FAILED, ACTION_ABORTED, ACTION_OBSERVED)
# States in which the controller still owes the world something after a restart.
ACTION_UNFINISHED = (ACTION_INTENT, ACTION_AWAITING, ACTION_STARTED, ACTION_DONE)
ACTION_FINAL = (ACTION_VERIFIED, ACTION_FAILED, ACTION_ABORTED, ACTION_OBSERVED)

STEP_STARTED = "started"
STEP_DONE = "done"
STEP_FAILED = "failed"

# How a failure counts against the retry budget: a transient one (Slurm timed out, the job
# did not answer in time) may be retried; a permanent one (no verified checkpoint, the
# node is not ours, burn-in failed) goes up the escalation ladder at once.
TRANSIENT = "transient"
PERMANENT = "permanent"
OUTCOME_CLASSES = (TRANSIENT, PERMANENT)


class ActionFailed(Exception):
    """An action step failed; ``outcome_class`` says whether retrying may help."""

    def __init__(self, message: str, outcome_class: str = PERMANENT,
                 data: dict[str, Any] | None = None) -> None:
        assert outcome_class in OUTCOME_CLASSES
        super().__init__(message)
        self.outcome_class = outcome_class
        self.data = dict(data or {})


@dataclass
class Incident:
    """One problem in one place, with everything the controller did about it."""

    id: str
    group: str          # what makes two findings the same problem (see policy.incident_group)
    kind: str
    job: str | None
    node: str | None
    state: str
    severity: str
    summary: str
    opened_at: float
    updated_at: float
    detected_at: float | None = None   # when the problem began (the finding's time_start)
    decided_at: float | None = None    # first decision taken
    recovered_at: float | None = None  # verification passed
    closed_at: float | None = None
    finding: dict[str, Any] = field(default_factory=dict)  # the newest finding, as JSON

    @property
    def open(self) -> bool:
        """Whether the incident is still being handled."""
        return self.state not in INCIDENT_CLOSED_STATES


@dataclass
class ActionRecord:
    """One attempt of one action for one incident."""

    id: str
    incident_id: str
    action: str
    mode: str
    attempt: int
    state: str
    node: str | None
    job: str | None
    plan: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    outcome_class: str | None = None
    error: str = ""
    reason: str = ""  # the decision's reason, as told


@dataclass
class StepRecord:
    """One step of an action: journaled before it runs and after it ends."""

    action_id: str
    seq: int
    name: str
    state: str
    inputs: dict[str, Any]
    outcome: dict[str, Any]
    started_at: float
    ended_at: float | None
    error: str = ""


@dataclass(frozen=True)
class BreakerState:
    """The circuit breaker: when open, no action runs (undrains included) until reset."""

    open: bool
    reason: str = ""
    since: float | None = None
    reset_by: str = ""
    reset_at: float | None = None

