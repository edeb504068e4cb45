"""Run the selected checks in order and build the report."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sentinel.config import ConfigError
from sentinel.preflight.checks import CHECKS, Check
from sentinel.preflight.checks.base import Context
from sentinel.preflight.config import CHECK_NAMES, Setup, slurm_configured_here
from sentinel.preflight.report import PROBLEM, CheckResult, Report, Result, problem, skipped

if TYPE_CHECKING:
    from sentinel.controller.slurm import Slurm

log = logging.getLogger(__name__)


def parse_names(text: str | None, flag: str) -> list[str]:
    """Return the check names of a comma list, or raise ConfigError naming the bad one."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for n in names:
        if n not in CHECK_NAMES:
            raise ConfigError(f"{flag}: {n!r} is not a check (valid: {', '.join(CHECK_NAMES)})")
    return names


def slurm_of(setup: Setup) -> tuple[Slurm | None, str]:
    """Return the Slurm client of ``controller:``, or None and why there is none.

    Slurm counts as configured when ``controller.scheduler`` says slurm in the file, or
    when its client tools and a slurm.conf are here; otherwise the Slurm checks are
    skipped, saying so.
    """
    from sentinel.controller.slurm import Slurm

    ctl = setup.controller
    if ctl.scheduler == "none":
        return None, "no Slurm: controller.scheduler is none"
    said = "scheduler" in ((setup.file_data or {}).get("controller") or {})
    if not said:
        missing = slurm_configured_here(ctl.slurm_bin_dir)
        if missing:
            return None, (f"no Slurm configured here: {missing}, and the config does not set "
                          "controller.scheduler (set it to slurm to check Slurm from this "
                          "host)")
    return Slurm.from_config(ctl), ""


def run_checks(ctx: Context, only: Iterable[str] = (), skip: Iterable[str] = ()) -> Report:
    """Run every check not excluded by ``only``/``skip``/``preflight.skip``, in order."""
    setup = ctx.setup
    only, skip = list(only), set(skip) | set(setup.preflight.skip)
    started = ctx.clock()
    results = []
    for name, title, fn in CHECKS:
        t = time.monotonic()
        if name == "config" and not setup.valid:
            res = fn(ctx)  # always shown: it explains the exit code 2
        elif (only and name not in only) or name in skip:
            why = (f"--only {','.join(only)}" if only and name not in only else
                   "--skip" if name not in setup.preflight.skip else "preflight.skip")
            res = skipped(f"not selected ({why})")
        elif not setup.valid:
            res = skipped("the config does not load (see config)")
        else:
            res = _safe(fn, ctx, name)
        # One line: Slurm's and torch's messages span several.
        summary = " ".join(res.summary.split())
        results.append(CheckResult(name, title, res.status, summary, time.monotonic() - t,
                                   res.evidence))
        log.debug("preflight %s: %s: %s", name, res.status, summary)
    return Report(hostname=setup.hostname, started_at=started, finished_at=ctx.clock(),
                  config=setup.path, job=setup.job.name if setup.job is not None else None,
                  checks=results, config_valid=setup.valid)


def _safe(fn: Check, ctx: Context, name: str) -> Result:
    try:
        res = fn(ctx)
    except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
        log.exception("preflight check %s failed", name)
        return problem(f"the check itself failed: {type(e).__name__}: {e}")
    if res.status == PROBLEM and not res.summary:
        res.summary = "problem (no detail)"
    return res
