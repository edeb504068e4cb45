"""Run rules each cycle, and turn findings into state changes (firing, resolved).

The engine remembers which findings are firing, keyed by ``Finding.key``. Each
cycle it emits a finding that is new, one whose severity, action or classification
changed, and a ``resolved`` copy of one that its rule no longer reports or reports
as resolved. Memory is bounded: at most ``max_tracked`` keys are remembered.

A rule runs once per cycle; a steps rule bound to a job (``Rule.job``) is its own run,
named by ``Rule.label``, so a finding is resolved only when the run that reported it
ran again without it: a job whose stream failed keeps its findings.
"""

from __future__ import annotations

import dataclasses
import logging
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
                 clock: Callable[[], float] = time.time, fetch_threads: int = FETCH_THREADS
                 ) -> None:
        self.rules = rules
        self.fetch_threads = fetch_threads
        self.max_tracked = max_tracked
        self.clock = clock
        # key -> (last emitted signature, finding, label of the rule run that reported it);
        # insertion order = age, for the bound.
        self._known: OrderedDict[str, tuple[tuple[str, str, str, str], Finding, str]] = (
            OrderedDict())
        # rule label -> why its data could not be fetched this cycle.
        self.errors: dict[str, str] = {}

    def evaluate(self, fetch: Fetch, now: float | None = None) -> list[Finding]:
        """Run every rule once (diagnosis last, on this cycle's findings); return changes."""
        now = self.clock() if now is None else now
        current: list[Finding] = []
        origins: list[str] = []
        ran: set[str] = set()
        later = [r for r in self.rules if r.source() == "findings"]
        first = [r for r in self.rules if r.source() != "findings"]

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
        for rule in later:
            found = run_rule(rule, Window(findings=list(current), now=now,
                                          previous=previous.get(rule.label, [])))
            current += found
            origins += [rule.label] * len(found)
            ran.add(rule.label)
        return self.update(current, ran, origins, now=now)

    def _by_origin(self) -> dict[str, list[Finding]]:
        """Return the remembered findings of each rule run, by its label."""
        out: dict[str, list[Finding]] = {}
        for _sig, f, origin in self._known.values():
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
            self._known[k] = (sig, f, f.rule if origins is None else origins[i])
            self._known.move_to_end(k)
        for k, (_sig, f, origin) in list(self._known.items()):
            if k in seen or origin not in rules_ran or f.state == "resolved":
                continue
            gone = dataclasses.replace(f, state="resolved", evidence=dict(f.evidence))
            gone.evidence["resolved_because"] = "no longer reported by its rule"
            changes.append(gone)
            self._known[k] = (signature(gone), gone, origin)
        while len(self._known) > self.max_tracked:
            self._known.popitem(last=False)
        return changes

    def firing(self) -> list[Finding]:
        """Return the findings currently firing."""
        return [f for _, f, _ in self._known.values() if f.state == "firing"]
