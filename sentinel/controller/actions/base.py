"""What every action is: a plan, a list of journaled steps, and a verification.

An action is a class with a ``name`` and three methods:

- ``plan(ctx, incident, finding, decision) -> dict``: what it would do, where, and what
  it would cost, as JSON. Reads the world, changes nothing (observe and ask modes show
  the plan and stop here). Raises :class:`ActionFailed` when nothing sensible can be done.
- ``steps(plan) -> list[Step]``: the changes, in order. The executor journals each step
  before it runs and after it ends. A step must be safe to run again (the controller may
  die after doing it and before journaling it): either idempotent by nature (submitting
  a request whose id is fixed in the plan), or with a ``check`` that looks at the world
  and says it is already done (a node already drained with our reason).
- ``verify(run) -> dict``: after the steps, whether the world shows the fix worked
  (loss back on trend, job running on the new node set). May wait, up to its deadline.
  Raises :class:`ActionFailed` when it did not work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from sentinel.controller.model import ActionFailed, ActionRecord, Incident

if TYPE_CHECKING:
    from sentinel.controller.config import ControllerConfig, JobSpec, PolicyConfig
    from sentinel.controller.journal import Journal
    from sentinel.controller.policy import Decision
    from sentinel.rules.finding import Finding
    from sentinel.rules.window import StepPoint

__all__ = ["Action", "ActionContext", "ActionFailed", "Run", "Step"]


class Teller(Protocol):
    """Where actions report progress (the Slack thread of the incident)."""

    def progress(self, record: ActionRecord, what: str, text: str,
                 data: dict[str, Any] | None = None) -> None:
        """Tell one step of an action."""


@dataclass
class ActionContext:
    """What actions may use: config, journal, clients and clocks (all injected)."""

    config: ControllerConfig
    policy: PolicyConfig
    journal: Journal
    jobs: dict[str, JobSpec]
    clock: Callable[[], float]
    sleep: Callable[[float], object]  # returns early (truthy) when the controller stops
    # The followed job's step records, newest last (the loop's step streams).
    steps_of: Callable[[str], list[StepPoint]]
    slurm: Any | None = None        # sentinel.controller.slurm.Slurm when a scheduler is set
    teller: Teller | None = None
    # Services an action registers for others (e.g. burn-in's runner for spare_swap).
    extras: dict[str, Any] = field(default_factory=dict)

    def job(self, name: str | None) -> JobSpec:
        """Return a followed job's spec, or fail permanently naming the known ones."""
        if name and name in self.jobs:
            return self.jobs[name]
        known = ", ".join(sorted(self.jobs)) or "none"
        raise ActionFailed(f"job {name!r} is not one the controller follows (controller "
                           f"config jobs: {known})")


@dataclass
class Run:
    """One execution of an action: its record, plan, and the outcomes of its steps so far."""

    ctx: ActionContext
    record: ActionRecord
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def plan(self) -> dict[str, Any]:
        """Return the action's plan."""
        return self.record.plan

    def tell(self, what: str, text: str, data: dict[str, Any] | None = None) -> None:
        """Report progress to the incident's thread (and the journal's events)."""
        self.ctx.journal.event(what, text, incident_id=self.record.incident_id,
                               action_id=self.record.id, data=data)
        if self.ctx.teller is not None:
            self.ctx.teller.progress(self.record, what, text, data)


@dataclass(frozen=True)
class Step:
    """One change an action makes; ``check`` says whether the world already shows it done."""

    name: str
    run: Callable[[Run], dict[str, Any]]
    check: Callable[[Run], dict[str, Any] | None] | None = None
    # Steps that change a node (drain, resume) stop while the breaker is open.
    pauses_on_breaker: bool = True


class Action(Protocol):
    """An action the controller can take (one file each under controller/actions/)."""

    name: ClassVar[str]

    def plan(self, ctx: ActionContext, incident: Incident, finding: Finding,
             decision: Decision) -> dict[str, Any]:
        """Return what the action would do and cost; change nothing."""

    def steps(self, plan: dict[str, Any]) -> list[Step]:
        """Return the steps that carry out ``plan``."""

    def verify(self, run: Run) -> dict[str, Any]:
        """Return evidence that the fix worked, or raise ActionFailed."""

    def describe(self, plan: dict[str, Any]) -> str:
        """Return the plan in a sentence for people."""
