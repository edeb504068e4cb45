"""What every detector module exposes: a DetectorSpec naming its inputs and params."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.rules.finding import Finding
from sentinel.rules.window import Window


@dataclass(frozen=True)
class DetectorSpec:
    """A detector: its name, parameter dataclass, inputs and pure ``detect`` function.

    ``inputs`` names the window roles it reads: ``steps`` (step-exact records) or a
    series role a rule maps to PromQL. ``required`` is the subset a rule must provide.
    """

    name: str
    params: type[Any]
    detect: Callable[[Window, Any], list[Finding]]
    inputs: tuple[str, ...]
    required: tuple[str, ...]
    default_severity: str
    default_action: str
    description: str
