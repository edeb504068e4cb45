"""Replay a detector-input file through the rules as a live run would see them.

What ``sentinel detect FILE`` does, for it and for the benchmark that replays recorded
traces (``bench/detectors/throughput.py --real-dir``): the file is streamed through the
one parser (``jsonl.py``) record by record, each run's records are checked
(``DetectorInput``) and fed to its own step consumers (node records to those that read
them), and at the end each run's findings rules (the diagnosis) run on its findings.
Memory does not grow with the file (the consumers are bounded; at most MAX_RUNS runs).

A finding's ``detected_at`` is when a live engine would have emitted it: a live rule runs
every ``Rule.every(DEFAULT_CYCLE_S)`` seconds (the steps rules every 2 s, at the deployed
15 s cycle), so the moment a detector decides is moved on to its rule's next run, on a
grid from the run's first record (a detector started with the job), and
``detected_step`` is the newest step of the run's records up to that time, as the live
window would have held: a second pass over the file, for those times only (bounded).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from sentinel.rules.engine import run_rule, stamp
from sentinel.rules.finding import Finding
from sentinel.rules.jsonl import KNOWN_KEYS, DetectorInput, InputError, iter_records
from sentinel.rules.rulefile import DEFAULT_CYCLE_S, Rule
from sentinel.rules.spec import NodeConsumer, StepConsumer
from sentinel.rules.window import NodePoint, StepPoint, Window

# Resumes (steps going back) said; more are counted.
MAX_NOTES = 20


def detect_file(path: str | Path, rules: list[Rule], default_run: str, *, strict: bool = False,
                say: Callable[[str], None] = lambda _line: None) -> list[Finding]:
    """Return the findings of every run in the file at ``path``.

    Records without a ``run``/``job`` belong to ``default_run``. ``say`` gets the
    warnings (unknown keys), the resumes and the consumers' notes, one line each.
    Raises InputError on bad input: a bad line, out-of-order lines, no records at all,
    and under ``strict`` a key the format does not know.
    """
    runs = _Runs(rules, default_run, say)
    unknown: dict[str, str] = {}
    warned = 0
    records = 0
    for where, pt in iter_records(path, unknown):
        for key, first in list(unknown.items())[warned:]:
            if strict:
                raise InputError(f"{first}: unknown key {key!r} (known: {', '.join(KNOWN_KEYS)})")
            say(f"warning: {first}: unknown key {key!r} ignored (known: "
                f"{', '.join(KNOWN_KEYS)})")
        warned = len(unknown)
        records += 1
        runs.feed(where, pt)
    if not records:
        raise InputError(f"{path}: no step records (valid: one JSON object per line)")
    if runs.notes > MAX_NOTES:
        say(f"{runs.notes - MAX_NOTES} more resumes not listed")
    found = runs.finish()
    _steps_at_emission(path, found, default_run)
    out: list[Finding] = []
    for name, got in found.items():
        out += got + runs.findings_rules(name, got)
    return out


def _steps_at_emission(path: str | Path, found: dict[str, list[Finding]], default: str
                       ) -> None:
    """Set each finding's ``detected_step`` to the newest step of its run's records up to
    its ``detected_at`` (a second read of the file; a few numbers kept per finding).
    """
    wanted = {name: sorted({f.detected_at for f in fs if f.detected_at is not None})
              for name, fs in found.items()}
    wanted = {n: ts for n, ts in wanted.items() if ts}
    if not wanted:
        return
    newest: dict[str, int] = {}  # run -> the highest step of its records so far
    at: dict[tuple[str, float], int] = {}  # (run, time) -> the newest step up to it
    nxt = dict.fromkeys(wanted, 0)  # run -> index of its next wanted time
    for _where, pt in iter_records(path, {}):
        name = pt.run or default
        ts = wanted.get(name)
        if ts is None or not isinstance(pt, StepPoint) or pt.time is None:
            continue
        i = nxt[name]
        while i < len(ts) and pt.time > ts[i]:
            if name in newest:
                at[(name, ts[i])] = newest[name]
            i += 1
        nxt[name] = i
        newest[name] = max(pt.step, newest.get(name, pt.step))
    for name, ts in wanted.items():
        for t in ts[nxt[name]:]:
            at[(name, t)] = newest[name]
    for name, fs in found.items():
        for f in fs:
            step = at.get((name, f.detected_at)) if f.detected_at is not None else None
            if step is not None:
                f.detected_step = step


class _Runs:
    """The rules' step consumers and the input checks, one set per run of the file.

    Records carry their run (``run``/``job``) or belong to the default one; runs stay
    apart (their steps and times are checked and detected separately) and every finding
    names its run as its job. At most MAX_RUNS runs, so memory stays bounded.
    """

    MAX_RUNS = 1000

    def __init__(self, rules: list[Rule], default: str, say: Callable[[str], None]) -> None:
        self.rules, self.default, self.say = rules, default, say
        # A series rule whose detector another rule runs on the steps (throughput and
        # throughput-steps) is that rule's Prometheus form: the steps one answers for both.
        on_steps = {r.detector for r in rules if not r.series and r.source() == "steps"}
        self.step_rules = [r for r in rules if r.source(online=False) == "steps"
                           and not (r.series and r.detector in on_steps)]
        self.runs: dict[str, tuple[DetectorInput, list[tuple[Rule, StepConsumer]]]] = {}
        self.notes = 0
        # run -> the time of its first record: when a live detector would have started.
        self.start: dict[str, float] = {}

    def feed(self, where: str, pt: StepPoint | NodePoint) -> None:
        """Check a record and give it to its run's consumers (node records to those that
        read them).
        """
        name = pt.run or self.default
        run = self.runs.get(name)
        if run is None:
            if len(self.runs) >= self.MAX_RUNS:
                raise InputError(f"{where}: run {name!r} is the {self.MAX_RUNS + 1}th run of "
                                 f"the file (valid: at most {self.MAX_RUNS}; split the file)")
            stream = self._stream
            run = self.runs[name] = (DetectorInput(), [(r, stream(r, name))
                                                       for r in self.step_rules])
        if pt.time is not None:
            self.start.setdefault(name, pt.time)
        note = run[0].feed(where, pt)
        if note is not None:
            self.notes += 1
            if self.notes <= MAX_NOTES:
                self.say(note)
        if isinstance(pt, NodePoint):
            for _rule, consumer in run[1]:
                if isinstance(consumer, NodeConsumer):
                    consumer.feed_node(pt)
            return
        for _rule, consumer in run[1]:
            consumer.feed(pt)

    @staticmethod
    def _stream(rule: Rule, name: str) -> StepConsumer:
        assert rule.spec.stream is not None  # a detector that reads steps has one
        consumer: StepConsumer = rule.spec.stream(rule.params, name)
        return consumer

    def finish(self) -> dict[str, list[Finding]]:
        """Return every run's findings of its steps rules, ``detected_at`` as emitted live."""
        out: dict[str, list[Finding]] = {}
        for name, (_checks, consumers) in self.runs.items():
            found: list[Finding] = []
            for rule, consumer in consumers:
                got = stamp(rule, consumer.finish(), name)
                every = rule.every(DEFAULT_CYCLE_S)
                if name in self.start and every is not None:
                    for f in got:
                        f.detected_at = emitted(f.detected_at, self.start[name], every)
                found += got
                for note in consumer.notes:
                    self.say(f"rule {rule.name}"
                             f"{'' if len(self.runs) == 1 else f' (run {name})'}: {note}")
            out[name] = found
        return out

    def findings_rules(self, name: str, found: list[Finding]) -> list[Finding]:
        """Return what the findings rules (the diagnosis) make of one run's findings."""
        out: list[Finding] = []
        for rule in self.rules:
            if rule.source(online=False) == "findings":
                out += run_rule(rule, Window(job=name, findings=list(found) + out))
        return out


def emitted(decided: float | None, start: float, every: float) -> float | None:
    """Return when a rule run every ``every`` s from ``start`` first emits what its
    detector decided at ``decided``: at that run, or at the next one.
    """
    if decided is None or not math.isfinite(decided) or decided <= start:
        return decided
    # The tolerance keeps a decision on a run's own time (float noise) at that run.
    return start + math.ceil((decided - start) / every - 1e-9) * every
