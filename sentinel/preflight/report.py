"""The preflight report: each check's status, time and evidence; text, JSON and exit code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sentinel.jsonnum import dumps, encode

OK, PROBLEM, SKIPPED = "ok", "problem", "skipped"
STATUSES = (OK, PROBLEM, SKIPPED)
EXIT_OK, EXIT_PROBLEM, EXIT_BAD = 0, 1, 2
# Evidence values longer than this are cut in the text view (the JSON keeps them whole).
TEXT_VALUE_MAX = 160


@dataclass
class Result:
    """What one check found: its status, a one-line summary and the evidence for it."""

    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


def ok(summary: str, **evidence: Any) -> Result:
    """Return a passing result."""
    return Result(OK, summary, evidence)


def problem(summary: str, **evidence: Any) -> Result:
    """Return a failing result; the summary says what is wrong and what to do."""
    return Result(PROBLEM, summary, evidence)


def skipped(summary: str, **evidence: Any) -> Result:
    """Return a check that did not run here; the summary says why."""
    return Result(SKIPPED, summary, evidence)


@dataclass
class CheckResult:
    """One check in the report."""

    name: str
    title: str
    status: str
    summary: str
    seconds: float
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"name": self.name, "title": self.title, "status": self.status,
                "summary": self.summary, "seconds": round(self.seconds, 3),
                "evidence": encode(self.evidence)}


@dataclass
class Report:
    """The whole pre-flight: where, for which job, and every check in order."""

    hostname: str
    started_at: float
    finished_at: float
    config: str | None
    job: str | None
    checks: list[CheckResult]
    config_valid: bool = True

    @property
    def problems(self) -> list[CheckResult]:
        """Return the checks that found a problem."""
        return [c for c in self.checks if c.status == PROBLEM]

    @property
    def exit_code(self) -> int:
        """Return 2 for a config that does not load, 1 for any problem, else 0."""
        if not self.config_valid:
            return EXIT_BAD
        return EXIT_PROBLEM if self.problems else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``sentinel preflight --json``)."""
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        return {"hostname": self.hostname, "started_at": self.started_at,
                "finished_at": self.finished_at, "config": self.config, "job": self.job,
                "ok": self.exit_code == EXIT_OK, "exit_code": self.exit_code,
                "counts": counts, "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        """Return the report as one JSON document."""
        return dumps(self.to_dict(), indent=1)


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(encode(v), sort_keys=True)
    return text if len(text) <= TEXT_VALUE_MAX else text[:TEXT_VALUE_MAX - 3] + "..."


def render(report: Report, verbose: bool = False) -> str:
    """Return the text view: a line per check; the evidence of problems (all with verbose)."""
    head = f"sentinel preflight on {report.hostname}"
    if report.job:
        head += f", job {report.job}"
    head += f" (config {report.config or 'none: defaults and environment'})"
    lines = [head, ""]
    width = max((len(c.name) for c in report.checks), default=8)
    for c in report.checks:
        lines.append(f"  {c.status.upper():8} {c.name:{width}} {c.seconds:7.1f} s  {c.summary}")
        if verbose or c.status == PROBLEM:
            for k, v in c.evidence.items():
                lines.append(f"  {'':8} {'':{width}} {'':9}  {k}: {_value(v)}")
    lines.append("")
    n = {s: sum(c.status == s for c in report.checks) for s in STATUSES}
    verdict = ("the config does not load" if not report.config_valid
               else f"{n[PROBLEM]} problem(s): {', '.join(c.name for c in report.problems)}"
               if report.problems else "ready")
    lines.append(f"{verdict} ({n[OK]} ok, {n[PROBLEM]} problem, {n[SKIPPED]} skipped; "
                 f"{report.finished_at - report.started_at:.1f} s); exit {report.exit_code}")
    return "\n".join(lines) + "\n"
