"""Run rules each cycle, and turn findings into state changes (firing, resolved).

The engine remembers which findings are firing, keyed by ``Finding.key``. Each
cycle it emits a finding that is new, one whose severity, action or classification
changed, and a ``resolved`` copy of one that its rule no longer reports or reports
as resolved. Memory is bounded: at most ``max_tracked`` keys are remembered.

Each rule run has its own cadence (``Rule.every(interval_s)``: series rules once per
driver cycle, steps rules every couple of seconds): an evaluation runs only the rules
that are due, and :meth:`Engine.next_due` says when the next one is. A steps rule bound
to a job (``Rule.job``) is its own run, named by ``Rule.label``, so a finding is
resolved only when the run that reported it ran again without it: a rule that was not
due, or a job whose stream failed, keeps its findings, and the findings rules (the
diagnosis, run last at every evaluation that ran a rule) read them as last reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sentinel.rules.finding import Finding
from sentinel.rules.rulefile import Rule
from sentinel.rules.window import Window

log = logging.getLogger(__name__)

# Enough for every GPU of a 1,024-node cluster to have one open finding, twice over.
MAX_TRACKED = 20000
# Rules fetched at once: Prometheus answers queries on several cores, and a cycle is
# mostly waiting for it; a handful keeps the load on Prometheus modest.
FETCH_THREADS = 4
# A rule is due this much before its time: a driver that sleeps until next_due() and
# reads the clock again must not find the rule a few microseconds early and skip it.
DUE_SLACK_S = 0.01

Fetch = Callable[[Rule, float], Window]


def signature(f: Finding) -> tuple[str, str, str, str]:
    """Return what makes a finding "changed" for the engine: severity, action, state, class."""
    return (f.severity, f.suggested_action, f.state, str(f.evidence.get("classification", "")))


def run_rule(rule: Rule, window: Window) -> list[Finding]:
    """Run one rule's detector on a window and stamp the rule's name and overrides."""
    return stamp(rule, rule.spec.detect(window, rule.params), window.job)


def stamp(rule: Rule, found: list[Finding], job: str) -> list[Finding]:
    """Put the rule's name, its severity/action overrides and the job on its findings."""
    for f in found:
        f.rule = rule.name
        if rule.severity:
            f.severity = rule.severity
        if rule.action:
            f.suggested_action = rule.action
        if f.job is None and job:
            f.job = job
    return found


class Engine:
    """Evaluate rules and deduplicate their findings across cycles."""

    def __init__(self, rules: list[Rule], *, max_tracked: int = MAX_TRACKED,
                 clock: Callable[[], float] = time.time, fetch_threads: int = FETCH_THREADS,
                 interval_s: float | None = None) -> None:
        self.rules = rules
        self.fetch_threads = fetch_threads
        self.max_tracked = max_tracked
        self.clock = clock
        # The driver's cycle: series rules run once per cycle, steps rules more often
        # (Rule.every). None: every rule without its own interval runs at every evaluation.
        self.interval_s = interval_s
        # key -> (last emitted signature, finding, label of the rule run that reported it,
        # that run's serial when it last reported it: -1 for a copy the engine resolved);
        # insertion order = age, for the bound.
        self._known: OrderedDict[str, tuple[tuple[str, str, str, str], Finding, str, int]] = (
            OrderedDict())
        # rule label -> why its data could not be fetched the last time it ran.
        self.errors: dict[str, str] = {}
        # rule label -> when it is due next; serial of its last completed run.
        self._due: dict[str, float] = {}
        self._serial: dict[str, int] = {}
        self._runs = 0
        # Labels of the rule runs that were due at the last evaluation (run, or failed).
        self.tried: set[str] = set()

    def due(self, rule: Rule, now: float) -> bool:
        """Return whether ``rule`` runs at an evaluation at ``now``."""
        at = self._due.get(rule.label)
        return at is None or now >= at - DUE_SLACK_S

    def next_due(self) -> float | None:
        """Return when the next rule is due (the past: now), None if the rules have no
        cadence (each runs at every evaluation: the caller's own cycle).
        """
        times = []
        for r in self.rules:
            every = r.every(self.interval_s)
            if every is not None:
                times.append(self._due.get(r.label, -math.inf))
        return min(times) if times else None

    def evaluate(self, fetch: Fetch, now: float | None = None) -> list[Finding]:
        """Run the rules that are due (findings rules last, on the findings of every rule
        as each last reported them); return the changes.
        """
        now = self.clock() if now is None else now
        current: list[Finding] = []
        origins: list[str] = []
        ran: set[str] = set()
        later = [r for r in self.rules if r.source() == "findings"]
        first = [r for r in self.rules if r.source() != "findings" and self.due(r, now)]
        self.tried = {r.label for r in first}
        if not first and any(r.source() != "findings" for r in self.rules):
            return []  # nothing due: the findings rules would see what they saw
        for r in first:
            every = r.every(self.interval_s)
            if every is not None:
                self._due[r.label] = now + every

        def get(rule: Rule) -> Window | Exception:
            try:
                return fetch(rule, now)
            except Exception as e:  # noqa: BLE001 - one failing source must not stop the rest
                return e

        if self.fetch_threads > 1 and len(first) > 1:
            with ThreadPoolExecutor(max_workers=self.fetch_threads) as pool:
                windows = list(pool.map(get, first))
        else:
            windows = [get(r) for r in first]
        previous = self._by_origin()
        for rule, window in zip(first, windows, strict=True):
            if isinstance(window, Exception):
                self.errors[rule.label] = str(window)
                log.warning("rule %s: cannot fetch its data: %s", rule.label, window)
                continue
            self.errors.pop(rule.label, None)
            window.previous = previous.get(rule.label, [])
            found = run_rule(rule, window)
            # Online, a finding is first emitted now, having seen the window's newest
            # step (a detector's own replay-time step is for offline replays).
            newest = max((p.step for p in window.steps), default=None)
            for f in found:
                if newest is not None:
                    f.detected_step = newest
            current += found
            origins += [rule.label] * len(found)
            ran.add(rule.label)
        # The rules not run now (not due, or their source failed) count as they last
        # reported: a disk-latency finding of the last 15 s cycle still names the cause
        # of a drop the step rule finds now.
        skip = ran | {r.label for r in later}
        held = [f for label, fs in self._last_reported().items() if label not in skip
                for f in fs]
        for rule in later:
            found = run_rule(rule, Window(findings=list(current) + held, now=now,
                                          previous=previous.get(rule.label, [])))
            current += found
            origins += [rule.label] * len(found)
            ran.add(rule.label)
        return self.update(current, ran, origins, now=now)

    def _by_origin(self) -> dict[str, list[Finding]]:
        """Return the remembered findings of each rule run, by its label."""
        out: dict[str, list[Finding]] = {}
        for _sig, f, origin, _serial in self._known.values():
            out.setdefault(origin, []).append(f)
        return out

    def _last_reported(self) -> dict[str, list[Finding]]:
        """Return what each rule run reported the last time it completed, by its label."""
        out: dict[str, list[Finding]] = {}
        for _sig, f, origin, serial in self._known.values():
            if serial >= 0 and serial == self._serial.get(origin):
                out.setdefault(origin, []).append(f)
        return out

    def update(self, findings: list[Finding], rules_ran: set[str],
               origins: list[str] | None = None, now: float | None = None) -> list[Finding]:
        """Compare this cycle's findings with the remembered ones; return the changes.

        ``rules_ran`` holds the labels of the rule runs that completed; ``origins`` gives
        the label of the run behind each finding (default: the finding's rule name). A
        finding first emitted now gets ``detected_at = now``; later versions of it keep
        the first emission's ``detected_at`` and ``detected_step``.
        """
        now = self.clock() if now is None else now
        changes: list[Finding] = []
        seen: set[str] = set()
        self._runs += 1
        for label in rules_ran:
            self._serial[label] = self._runs
        for i, f in enumerate(findings):
            k = f.key
            if k in seen:
                continue
            seen.add(k)
            sig = signature(f)
            prev = self._known.get(k)
            if prev is None:
                f.detected_at = now
            else:
                f.detected_at = prev[1].detected_at
                f.detected_step = prev[1].detected_step
            if prev is None or prev[0] != sig:
                changes.append(f)
            origin = f.rule if origins is None else origins[i]
            self._known[k] = (sig, f, origin, self._serial.get(origin, -1))
            self._known.move_to_end(k)
        for k, (_sig, f, origin, _serial) in list(self._known.items()):
            if k in seen or origin not in rules_ran or f.state == "resolved":
                continue
            gone = dataclasses.replace(f, state="resolved", evidence=dict(f.evidence))
            gone.evidence["resolved_because"] = "no longer reported by its rule"
            changes.append(gone)
            self._known[k] = (signature(gone), gone, origin, -1)
        while len(self._known) > self.max_tracked:
            self._known.popitem(last=False)
        return changes

    def firing(self) -> list[Finding]:
        """Return the findings currently firing."""
        return [f for _, f, _, _ in self._known.values() if f.state == "firing"]
