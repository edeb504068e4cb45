"""``sentinel detect``: offline on a JSON-lines run, or online against Prometheus/an agent.

Offline: ``sentinel detect FILE [--rules RULES.yml] [--job NAME] [--strict]`` reads
detector-input JSON lines (docs/DETECT-INPUT.md) and prints one JSON finding per line;
records name their run (``run``/``job``, else --job or the file's name) and runs are
detected apart. A key the format does not know is a warning (bad input under --strict).
Exit 0 with no findings, 1 with findings, 2 on bad input (the message names the line
and why) or bad rules. The file is streamed (memory does not grow with it); it must be
a regular file in time order (a resume from a checkpoint is reported on stderr;
shuffled, reversed or concatenated lines are bad input).

Online: ``sentinel detect --prometheus URL [--agent URL --job NAME] [--rules FILE]
[--once | --interval 15]`` evaluates every rule its sources allow each cycle and prints
state changes (new, changed, resolved findings); rules left out say why on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.config import ConfigError
from sentinel.jsonnum import dumps

EXIT_OK, EXIT_FOUND, EXIT_BAD = 0, 1, 2
# Resumes (steps going back) printed on stderr; more are counted.
MAX_NOTES = 20


def register(subparsers: Any) -> None:
    """Add the ``detect`` subcommand."""
    p = subparsers.add_parser(
        "detect", help="find loss spikes, throughput drops and their causes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="detector-input JSON lines (offline mode)")
    p.add_argument("--rules", help="rules YAML (default: the packaged default_rules.yml)")
    p.add_argument("--format", choices=["jsonl"], default="jsonl", help="output format")
    p.add_argument("--job", help="job name (offline: label for findings; online: the job "
                   "whose steps to follow on --agent)")
    p.add_argument("--prometheus", help="Prometheus base URL (online mode)")
    p.add_argument("--agent", help="agent base URL for the step stream (online mode)")
    p.add_argument("--strict", action="store_true", help="offline: a key the format does not "
                   "know is bad input (exit 2), not a warning")
    p.add_argument("--once", action="store_true", help="online: one cycle, then exit")
    p.add_argument("--interval", type=float, default=15.0, help="online: seconds per cycle")
    p.set_defaults(func=run)


def _emit(findings: list[Any]) -> None:
    for f in findings:
        sys.stdout.write(dumps(f.to_dict(), sort_keys=True) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Run offline or online detection; return the exit code."""
    from sentinel.rules.rulefile import load_rules

    if bool(args.file) == bool(args.prometheus or args.agent):
        print("sentinel detect: give either FILE (offline) or --prometheus/--agent (online)",
              file=sys.stderr)
        return EXIT_BAD
    try:
        rules = load_rules(args.rules)
    except ConfigError as e:
        print(f"sentinel detect: bad rules: {e}", file=sys.stderr)
        return EXIT_BAD
    if args.file:
        return _offline(args, rules)
    return _online(args, rules)


def _offline(args: argparse.Namespace, rules: list[Any]) -> int:
    from sentinel.rules.jsonl import InputError, iter_records

    default_run = args.job or Path(args.file).stem
    runs = _Runs(rules, default_run)
    unknown: dict[str, str] = {}
    warned = 0
    records = 0
    try:
        for where, pt in iter_records(args.file, unknown):
            if len(unknown) > warned:
                if _unknown_keys(unknown, warned, strict=args.strict):
                    return EXIT_BAD
                warned = len(unknown)
            records += 1
            runs.feed(where, pt)
    except InputError as e:
        print(f"sentinel detect: bad input: {e}", file=sys.stderr)
        return EXIT_BAD
    if not records:
        print(f"sentinel detect: bad input: {args.file}: no step records (valid: one JSON "
              "object per line)", file=sys.stderr)
        return EXIT_BAD
    if runs.notes > MAX_NOTES:
        print(f"sentinel detect: {runs.notes - MAX_NOTES} more resumes not listed",
              file=sys.stderr)
    found = runs.finish()
    _emit(found)
    return EXIT_FOUND if found else EXIT_OK


def _unknown_keys(unknown: dict[str, str], seen: int, *, strict: bool) -> bool:
    """Say which keys are not the format's (an error under --strict); return if fatal."""
    from sentinel.rules.jsonl import KNOWN_KEYS

    for key, where in list(unknown.items())[seen:]:
        what = "bad input" if strict else "warning"
        print(f"sentinel detect: {what}: {where}: unknown key {key!r} "
              f"{'' if strict else 'ignored '}(known: {', '.join(KNOWN_KEYS)})",
              file=sys.stderr)
        if strict:
            return True
    return False


class _Runs:
    """The rules' step consumers and the input checks, one set per run of the file.

    Records carry their run (``run``/``job``) or belong to the default one; runs stay
    apart (their steps and times are checked and detected separately) and every finding
    names its run as its job. At most MAX_RUNS runs, so memory stays bounded.
    """

    MAX_RUNS = 1000

    def __init__(self, rules: list[Any], default: str) -> None:
        self.rules, self.default = rules, default
        # A series rule whose detector another rule runs on the steps (throughput and
        # throughput-steps) is that rule's Prometheus form: the steps one answers for both.
        on_steps = {r.detector for r in rules if not r.series and r.source() == "steps"}
        self.step_rules = [r for r in rules if r.source(online=False) == "steps"
                           and not (r.series and r.detector in on_steps)]
        self.runs: dict[str, tuple[Any, list[tuple[Any, Any]]]] = {}
        self.notes = 0

    def feed(self, where: str, pt: Any) -> None:
        """Check a record and give it to its run's consumers (node records to those that
        read them).
        """
        from sentinel.rules.jsonl import DetectorInput, InputError
        from sentinel.rules.spec import NodeConsumer
        from sentinel.rules.window import NodePoint

        name = pt.run or self.default
        run = self.runs.get(name)
        if run is None:
            if len(self.runs) >= self.MAX_RUNS:
                raise InputError(f"{where}: run {name!r} is the {self.MAX_RUNS + 1}th run of "
                                 f"the file (valid: at most {self.MAX_RUNS}; split the file)")
            run = self.runs[name] = (DetectorInput(), [
                (r, r.spec.stream(r.params, name)) for r in self.step_rules])
        note = run[0].feed(where, pt)
        if note is not None:
            self.notes += 1
            if self.notes <= MAX_NOTES:
                print(f"sentinel detect: {note}", file=sys.stderr)
        if isinstance(pt, NodePoint):
            for _rule, stream in run[1]:
                if isinstance(stream, NodeConsumer):
                    stream.feed_node(pt)
            return
        for _rule, stream in run[1]:
            stream.feed(pt)

    def finish(self) -> list[Any]:
        """Return every run's findings (each run's findings rules on its own findings)."""
        from sentinel.rules.engine import run_rule, stamp
        from sentinel.rules.window import Window

        out: list[Any] = []
        for name, (_checks, streams) in self.runs.items():
            found: list[Any] = []
            for rule, stream in streams:
                found += stamp(rule, stream.finish(), name)
                for note in stream.notes:
                    print(f"sentinel detect: rule {rule.name}"
                          f"{'' if len(self.runs) == 1 else f' (run {name})'}: {note}",
                          file=sys.stderr)
            for rule in self.rules:
                if rule.source(online=False) == "findings":
                    found += run_rule(rule, Window(job=name, findings=list(found)))
            out += found
        return out


def _online(args: argparse.Namespace, rules: list[Any]) -> int:
    from sentinel.rules.online import OnlineDetector
    from sentinel.rules.sources import PrometheusSource, StepStream

    if args.agent and not args.job:
        print("sentinel detect: --agent needs --job (the job whose steps to follow)",
              file=sys.stderr)
        return EXIT_BAD
    detector = OnlineDetector(
        rules, PrometheusSource(args.prometheus) if args.prometheus else None,
        {args.job: StepStream(args.agent, args.job)} if args.agent else {},
    )
    for name, why in detector.inactive().items():
        print(f"sentinel detect: rule {name} inactive: {why}", file=sys.stderr)
    any_found = False
    while True:
        changes = detector.cycle()
        _emit(changes)
        any_found = any_found or bool(detector.firing()) or bool(changes)
        for name, err in detector.errors.items():
            print(f"sentinel detect: rule {name}: {err}", file=sys.stderr)
        if args.once:
            return EXIT_FOUND if any_found else EXIT_OK
        time.sleep(args.interval)
