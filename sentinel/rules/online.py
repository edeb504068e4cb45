"""Detect online: run the rules each cycle on Prometheus and on several jobs' step streams.

:class:`OnlineDetector` is what ``sentinel detect`` (online), the demo and the controller
drive: it decides which rules can run with the sources given, binds each steps rule to
every followed job (or to the one job the rule names), and lets the :class:`Engine`
de-duplicate the findings across cycles. A rule whose source is absent is inactive and
says why; a rule whose source fails this cycle is reported in :attr:`errors` and does not
stop the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from sentinel.rules.engine import FETCH_THREADS, MAX_TRACKED, Engine
from sentinel.rules.finding import Finding
from sentinel.rules.rulefile import Rule
from sentinel.rules.window import Window


class WindowSource(Protocol):
    """What the detector needs from a source: a window for a rule at a time."""

    def window(self, rule: Rule, now: float) -> Window:
        """Fetch what ``rule`` reads, ending at ``now``."""


class OnlineDetector:
    """Evaluate rules each cycle against Prometheus and the step streams of several jobs.

    ``streams`` maps a job name to its step stream (a :class:`StepStream`). Steps rules
    without a ``job`` run once per followed job; a rule naming a job runs for that job
    only. Series rules need ``prometheus``. Findings rules (the diagnosis) always run.
    ``interval_s`` is the driver's cycle: a :meth:`cycle` runs the rules that are due
    (``Rule.every``), and :meth:`next_due` says when to call it next; None runs every
    rule without an ``interval`` of its own at every call.
    """

    def __init__(
        self,
        rules: list[Rule],
        prometheus: WindowSource | None = None,
        streams: Mapping[str, WindowSource] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_tracked: int = MAX_TRACKED,
        fetch_threads: int = FETCH_THREADS,
        interval_s: float | None = None,
    ) -> None:
        self.rules = list(rules)
        self.prometheus = prometheus
        self.streams = dict(streams or {})
        self._inactive: dict[str, str] = {}
        runs: list[Rule] = []
        for rule in self.rules:
            bound = self._bind(rule)
            if isinstance(bound, str):
                self._inactive[rule.name] = bound
            else:
                runs += bound
        # Findings come out ordered by rule (findings rules last, as they run), then job.
        self._order = {r.name: (r.source() == "findings", i) for i, r in enumerate(self.rules)}
        self.engine = Engine(runs, max_tracked=max_tracked, clock=clock,
                             fetch_threads=fetch_threads, interval_s=interval_s)

    def _bind(self, rule: Rule) -> list[Rule] | str:
        """Return the runs of ``rule`` with the sources at hand, or why it cannot run."""
        source = rule.source(online=True)
        if source == "findings":
            return [rule]
        if source == "series":
            if self.prometheus is None:
                return f"reads series ({', '.join(rule.series)}) and no Prometheus is given"
            return [rule]
        if source is None:
            return (f"maps no series, and its detector {rule.detector} does not read steps "
                    f"(give series for: {', '.join(rule.spec.inputs)})")
        if rule.job is not None:
            if rule.job not in self.streams:
                return f"follows job {rule.job!r}, whose step stream is not followed"
            return [rule]
        if not self.streams:
            return "reads steps and no job's step stream is followed"
        return [dataclasses.replace(rule, job=job) for job in sorted(self.streams)]

    def _fetch(self, rule: Rule, now: float) -> Window:
        if rule.source(online=True) == "series":
            assert self.prometheus is not None  # inactive otherwise
            return self.prometheus.window(rule, now)
        assert rule.job is not None  # steps rules are bound to a job
        return self.streams[rule.job].window(rule, now)

    def _sort_key(self, f: Finding) -> tuple[tuple[bool, int], str, int, float, str]:
        return (self._order.get(f.rule, (True, len(self._order))), f.job or "",
                -1 if f.step_start is None else f.step_start, f.time_start or 0.0, f.key)

    def cycle(self, now: float | None = None) -> list[Finding]:
        """Run the active rules that are due; return the new, changed and resolved findings."""
        return sorted(self.engine.evaluate(self._fetch, now), key=self._sort_key)

    def next_due(self) -> float | None:
        """Return when the next rule is due (a time; in the past: now), None without cadence."""
        return self.engine.next_due()

    @property
    def tried(self) -> set[str]:
        """Return the labels of the rule runs that were due at the last :meth:`cycle`."""
        return set(self.engine.tried)

    def firing(self) -> list[Finding]:
        """Return the findings firing now, in the same order as :meth:`cycle`."""
        return sorted(self.engine.firing(), key=self._sort_key)

    @property
    def errors(self) -> dict[str, str]:
        """Return ``{rule label: why its data could not be fetched}`` for the last cycle."""
        return dict(self.engine.errors)

    def active(self) -> list[str]:
        """Return the labels of the rule runs each cycle makes (``rule[job]`` per job)."""
        return [r.label for r in self.engine.rules]

    def inactive(self) -> dict[str, str]:
        """Return ``{rule name: why it cannot run}`` for the rules left out."""
        return dict(self._inactive)
