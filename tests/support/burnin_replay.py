"""REPLAY of a recorded burn-in: print what `sentinel burnin --json` printed on a real GPU.

Not a burn-in. The Slurm test nodes have no GPU, so the controller's burn-in command in
the tests is ``srun ... python tests/support/burnin_replay.py REPORT.report.json``: it
prints the JSON lines recorded next to the report (``REPORT.jsonl``: start, progress,
result) and the final ``verdict`` line with the whole report under ``report``, as
``sentinel burnin --json`` does, then exits with the report's exit code (0 passed, 1 a
GPU failed). The recordings are real runs on an H200 (tests/fixtures/burnin/, see
tests/fixtures/README.md). It says on stderr that it is a replay.

    python tests/support/burnin_replay.py tests/fixtures/burnin/h200-fail.report.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPORT_SUFFIX = ".report.json"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "burnin"


def replay_lines(report_path: str | Path) -> list[str]:
    """Return the recorded JSON lines, the whole report on the ``verdict`` line."""
    report = json.loads(Path(report_path).read_text())
    recorded = Path(str(report_path)[: -len(REPORT_SUFFIX)] + ".jsonl").read_text()
    out = []
    for line in recorded.splitlines():
        event = json.loads(line)
        if event.get("event") == "verdict":
            event["report"] = report  # what `sentinel burnin --json` prints since from_dict
        out.append(json.dumps(event))
    return out


def recorded(verdict: str) -> str:
    """Return the replayed stdout of the recorded H200 burn-in, ``pass`` or ``fail``."""
    return "\n".join(replay_lines(FIXTURES / f"h200-{verdict}{REPORT_SUFFIX}")) + "\n"


def main(argv: list[str]) -> int:
    """Print the recorded lines and report; return the report's exit code."""
    if len(argv) != 1 or not argv[0].endswith(REPORT_SUFFIX):
        print(f"usage: burnin_replay.py NAME{REPORT_SUFFIX} (with NAME.jsonl beside it)",
              file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    node = os.environ.get("SLURMD_NODENAME", "?")
    print(f"burnin_replay: REPLAY of {argv[0]} (recorded on {report.get('hostname')}), "
          f"printed on Slurm node {node}: not a burn-in of this node", file=sys.stderr)
    for line in replay_lines(argv[0]):
        print(line, flush=True)
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
