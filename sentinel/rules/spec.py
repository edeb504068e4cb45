"""What every detector module exposes: a DetectorSpec naming its inputs and params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sentinel.rules.finding import Finding
from sentinel.rules.window import NodePoint, StepPoint, Window

# Inputs that are not Prometheus series: step records (the agent's step stream or a
# JSON-lines file) and the findings of the other rules in the same cycle.
NON_SERIES_INPUTS = ("steps", "findings")


# Findings one streamed rule keeps; beyond this, further ones are counted, not kept, so
# a hostile or pathological file cannot make memory grow with its length.
MAX_STREAM_FINDINGS = 10_000


class StepConsumer(Protocol):
    """A detector run over step records one at a time, in the input's order.

    ``feed`` takes the next record; ``finish`` returns the findings. Memory is bounded
    whatever the number of records: at most MAX_STREAM_FINDINGS findings are kept, and
    after ``finish``, ``notes`` says what was counted instead of kept or used.
    """

    notes: list[str]

    def feed(self, pt: StepPoint) -> None:
        """Take the next step record."""

    def finish(self) -> list[Finding]:
        """Return the findings of everything fed."""


@runtime_checkable
class NodeConsumer(Protocol):
    """A step consumer that also reads node records (what a node saw each second)."""

    def feed_node(self, rec: NodePoint) -> None:
        """Take the next node record, in time order with the step records."""


@dataclass(frozen=True)
class DetectorSpec:
    """A detector: its name, parameter dataclass, inputs and pure ``detect`` function.

    ``inputs`` names the window roles it reads: ``steps``, ``findings`` or a series role
    a rule maps to PromQL. ``required`` lists the series roles a rule must map when it
    reads Prometheus; a detector that also reads steps or findings runs from those when
    its rule maps no series. Severity and suggested action are not here: each finding
    carries its own (they depend on what was found), and a rule may override them.
    ``stream(params, job)`` builds the :class:`StepConsumer` of a detector that reads
    steps: ``sentinel detect FILE`` streams a file through it in bounded memory.
    """

    name: str
    params: type[Any]
    detect: Callable[[Window, Any], list[Finding]]
    inputs: tuple[str, ...]
    required: tuple[str, ...]
    description: str
    stream: Callable[[Any, str], StepConsumer] | None = None

    def __post_init__(self) -> None:
        odd = [r for r in self.required if r not in self.series_roles]
        if odd:
            raise ValueError(f"detector {self.name}: required {odd} are not series inputs "
                             f"(series inputs: {', '.join(self.series_roles) or 'none'})")
        if self.reads_steps and self.stream is None:
            raise ValueError(f"detector {self.name} reads steps but has no stream: "
                             "sentinel detect FILE could not run it in bounded memory")

    @property
    def series_roles(self) -> tuple[str, ...]:
        """Return the inputs a rule maps to PromQL."""
        return tuple(r for r in self.inputs if r not in NON_SERIES_INPUTS)

    @property
    def reads_steps(self) -> bool:
        """Return whether the detector runs on step records."""
        return "steps" in self.inputs

    @property
    def reads_findings(self) -> bool:
        """Return whether the detector runs on the other rules' findings."""
        return "findings" in self.inputs
