"""Replay a detector-input file through the rules as a live run would see them.

What ``sentinel detect FILE`` does, for it and for the benchmark that replays recorded
traces (``bench/detectors/throughput.py --real-dir``): the file is streamed through the
one parser (``jsonl.py``) record by record, each run's records are checked
(``DetectorInput``) and fed to its own step consumers (node records to those that read
them), and at the end each run's findings rules (the diagnosis) run on its findings.
Memory does not grow with the file (the consumers are bounded; at most MAX_RUNS runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sentinel.rules.engine import run_rule, stamp
from sentinel.rules.finding import Finding
from sentinel.rules.jsonl import KNOWN_KEYS, DetectorInput, InputError, iter_records
from sentinel.rules.rulefile import Rule
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
    return runs.finish()


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

    def finish(self) -> list[Finding]:
        """Return every run's findings (each run's findings rules on its own findings)."""
        out: list[Finding] = []
        for name, (_checks, consumers) in self.runs.items():
            found: list[Finding] = []
            for rule, consumer in consumers:
                found += stamp(rule, consumer.finish(), name)
                for note in consumer.notes:
                    self.say(f"rule {rule.name}"
                             f"{'' if len(self.runs) == 1 else f' (run {name})'}: {note}")
            for rule in self.rules:
                if rule.source(online=False) == "findings":
                    found += run_rule(rule, Window(job=name, findings=list(found)))
            out += found
        return out

