"""The config is valid: every section loads as its part loads it, the job is named."""

from __future__ import annotations

from sentinel.preflight.checks.base import Context
from sentinel.preflight.report import Result, ok, problem

TITLE = "the config is valid"


def check(ctx: Context) -> Result:
    """Report the sections that do not load, each with its error."""
    s = ctx.setup
    if not s.valid:
        bad = sorted(s.errors)
        return problem(f"{len(bad)} part(s) of the config do not load: {', '.join(bad)} "
                       "(fix them; nothing else was checked)",
                       file=s.path, **{f"error.{k}": v for k, v in sorted(s.errors.items())})
    where = f"{s.path}" if s.path else "no file: defaults and SENTINEL_* environment"
    summary = f"every section loads ({where})"
    if s.not_checked:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(s.not_checked.items()))
        summary += f"; not checked on this host: {why}"
    return ok(summary, file=s.path, sections=s.loaded,
              job=s.job.name if s.job is not None else None,
              notes=s.notes, not_checked=s.not_checked)
