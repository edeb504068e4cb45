"""REPLAY of a recorded burn-in: print what ``sentinel burnin --json`` printed on a real GPU.

Not a burn-in. Machines without a GPU (``sentinel demo``'s local Slurm nodes, the tests)
run this where a burn-in would run: it prints the JSON lines recorded with the report
(``NAME.jsonl``: start, progress, result) and the final ``verdict`` line with the whole
report under ``report``, as ``sentinel burnin --json`` does, then exits with the
report's exit code (0 passed, 1 a GPU failed). The recordings in ``replays/`` are real
burn-ins of one H200 (``replays/h200-env.txt``; tests/fixtures/README.md says how they
were made). It says on stderr that it is a replay.

``--textfile FILE`` also writes the ``sentinel_burnin_*`` metrics (burn-in's own writer),
for the agent's textfile collector, as ``sentinel burnin --textfile`` does; since they
describe this node's readiness, they carry this node's name (``--hostname``, default
``$SLURMD_NODENAME``, else the host name) and the time of the replay.

    python -m sentinel.burnin.replay pass
    python -m sentinel.burnin.replay fail --textfile /var/lib/sentinel/textfile/burnin.prom
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

REPORT_SUFFIX = ".report.json"
RECORDINGS = Path(__file__).with_name("replays")
# The recordings by verdict: a healthy H200 judged against the shipped floor (OK) and
# against a 2000 TFLOPS floor no GPU reaches today (LOW_FLOPS).
NAMED = {"pass": "h200-pass", "fail": "h200-fail"}


def report_path(name: str) -> Path:
    """Return the report of ``pass``, ``fail`` or a path to a ``*.report.json``."""
    if name in NAMED:
        return RECORDINGS / f"{NAMED[name]}{REPORT_SUFFIX}"
    return Path(name)


def replay_lines(report: str | Path) -> list[str]:
    """Return the recorded JSON lines, the whole report on the ``verdict`` line."""
    doc = json.loads(Path(report).read_text())
    recorded_lines = Path(str(report)[: -len(REPORT_SUFFIX)] + ".jsonl").read_text()
    out = []
    for line in recorded_lines.splitlines():
        event = json.loads(line)
        if event.get("event") == "verdict":
            event["report"] = doc  # what `sentinel burnin --json` prints since from_dict
        out.append(json.dumps(event))
    return out


def recorded(verdict: str) -> str:
    """Return the replayed stdout of the recorded burn-in, ``pass`` or ``fail``."""
    return "\n".join(replay_lines(report_path(verdict))) + "\n"


def write_textfile(report: str | Path, path: str | Path, hostname: str, now: float) -> None:
    """Write the report's metrics for ``hostname`` as if it finished at ``now``."""
    from sentinel.burnin.report import BurninReport
    from sentinel.burnin.report import write_textfile as write

    rep = BurninReport.from_dict(json.loads(Path(report).read_text()))
    took = rep.finished_at - rep.started_at
    write(path, dataclasses.replace(rep, hostname=hostname, started_at=now - took,
                                    finished_at=now))


def main(argv: list[str] | None = None) -> int:
    """Print the recorded lines (and write the textfile); return the report's exit code."""
    ap = argparse.ArgumentParser(prog="python -m sentinel.burnin.replay",
                                 description="REPLAY a recorded burn-in (not a burn-in).")
    ap.add_argument("report", help=f"pass, fail, or a NAME{REPORT_SUFFIX} with NAME.jsonl "
                                   "beside it")
    ap.add_argument("--textfile", help="also write the sentinel_burnin_* metrics here")
    ap.add_argument("--hostname", default="", help="node named in the textfile "
                                                   "(default $SLURMD_NODENAME or this host)")
    args = ap.parse_args(argv)
    path = report_path(args.report)
    if not path.name.endswith(REPORT_SUFFIX) or not path.exists():
        print(f"burnin replay: {args.report!r}: not a recording (valid: "
              f"{', '.join(NAMED)}, or an existing NAME{REPORT_SUFFIX})", file=sys.stderr)
        return 2
    doc = json.loads(path.read_text())
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    print(f"burnin replay: REPLAY of {path.name} (recorded on {doc.get('hostname')}), printed "
          f"on {node}: not a burn-in of this node", file=sys.stderr)
    for line in replay_lines(path):
        print(line, flush=True)
    if args.textfile:
        write_textfile(path, args.textfile, args.hostname or node, time.time())
    return int(doc["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
