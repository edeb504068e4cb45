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
[--once | --interval 15]`` evaluates the rules its sources allow and prints state changes
(new, changed, resolved findings); rules left out say why on stderr. Series rules run once
per ``--interval``, steps rules every 2 s (a rule's ``interval`` says otherwise), so a
drop in the step stream is printed seconds after it is sustained.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.config import ConfigError
from sentinel.jsonnum import dumps
from sentinel.rules.rulefile import DEFAULT_CYCLE_S, MIN_INTERVAL_S, STEPS_INTERVAL_S

EXIT_OK, EXIT_FOUND, EXIT_BAD = 0, 1, 2


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
    p.add_argument("--interval", type=float, default=DEFAULT_CYCLE_S,
                   help="online: seconds per cycle of the series rules (steps rules run every "
                   f"{STEPS_INTERVAL_S:g} s or at their own interval)")
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
    from sentinel.rules.jsonl import InputError
    from sentinel.rules.offline import detect_file

    def say(line: str) -> None:
        print(f"sentinel detect: {line}", file=sys.stderr)

    try:
        found = detect_file(args.file, rules, args.job or Path(args.file).stem,
                            strict=args.strict, say=say)
    except InputError as e:
        print(f"sentinel detect: bad input: {e}", file=sys.stderr)
        return EXIT_BAD
    _emit(found)
    return EXIT_FOUND if found else EXIT_OK


def _online(args: argparse.Namespace, rules: list[Any]) -> int:
    from sentinel.rules.online import OnlineDetector
    from sentinel.rules.sources import PrometheusSource, StepStream

    if args.agent and not args.job:
        print("sentinel detect: --agent needs --job (the job whose steps to follow)",
              file=sys.stderr)
        return EXIT_BAD
    if not args.interval >= MIN_INTERVAL_S:
        print(f"sentinel detect: --interval {args.interval:g} is too short (valid: at least "
              f"{MIN_INTERVAL_S:g} s)", file=sys.stderr)
        return EXIT_BAD
    detector = OnlineDetector(
        rules, PrometheusSource(args.prometheus) if args.prometheus else None,
        {args.job: StepStream(args.agent, args.job)} if args.agent else {},
        interval_s=args.interval,
    )
    for name, why in detector.inactive().items():
        print(f"sentinel detect: rule {name} inactive: {why}", file=sys.stderr)
    any_found = False
    while True:
        changes = detector.cycle()
        _emit(changes)
        any_found = any_found or bool(detector.firing()) or bool(changes)
        tried = detector.tried
        for name, err in detector.errors.items():
            if name in tried:  # failed now, not a rule that failed before and was not due
                print(f"sentinel detect: rule {name}: {err}", file=sys.stderr)
        if args.once:
            return EXIT_FOUND if any_found else EXIT_OK
        due = detector.next_due()
        time.sleep(args.interval if due is None else max(0.0, due - time.time()))
