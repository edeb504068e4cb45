"""What every detector module exposes: a DetectorSpec naming its inputs and params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.rules.finding import Finding
from sentinel.rules.window import Window

# Inputs that are not Prometheus series: step records (the agent's step stream or a
# JSON-lines file) and the findings of the other rules in the same cycle.
NON_SERIES_INPUTS = ("steps", "findings")


@dataclass(frozen=True)
class DetectorSpec:
    """A detector: its name, parameter dataclass, inputs and pure ``detect`` function.

    ``inputs`` names the window roles it reads: ``steps``, ``findings`` or a series role
    a rule maps to PromQL. ``required`` lists the series roles a rule must map when it
    reads Prometheus; a detector that also reads steps or findings runs from those when
    its rule maps no series. Severity and suggested action are not here: each finding
    carries its own (they depend on what was found), and a rule may override them.
    """

    name: str
    params: type[Any]
    detect: Callable[[Window, Any], list[Finding]]
    inputs: tuple[str, ...]
    required: tuple[str, ...]
    description: str

    def __post_init__(self) -> None:
        odd = [r for r in self.required if r not in self.series_roles]
        if odd:
            raise ValueError(f"detector {self.name}: required {odd} are not series inputs "
                             f"(series inputs: {', '.join(self.series_roles) or 'none'})")

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
