"""A spare is ready: the controller's own definition (``sentinel.controller.spares``).

Feature ``controller.spare_feature`` (the dataset is staged), free, in no reservation,
and a burn-in passed within ``controller.burnin_max_age_hours`` (journal or the agents'
exported burn-in through Prometheus). The journal is opened only if it exists; without
it (a controller that never ran, or no permission) only exported burn-ins count, and
the evidence says so.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from sentinel.preflight.checks.base import Context
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "a spare is ready (burned in, staged)"


def _journal(path: str, scratch: str) -> tuple[Any, str]:
    """Return the controller's journal, or an empty one in ``scratch`` and why."""
    from sentinel.controller.journal import Journal, JournalError

    if os.path.exists(path):
        try:
            return Journal(path), f"journal {path}"
        except JournalError as e:
            note = f"{e}: only burn-ins exported through Prometheus count"
    else:
        note = f"no journal at {path}: only burn-ins exported through Prometheus count"
    return Journal(os.path.join(scratch, "empty.db")), note


def check(ctx: Context) -> Result:
    """List the spare pool with each node's readiness; a problem when none is ready."""
    from sentinel.controller.slurm import SlurmError
    from sentinel.controller.spares import SparePool

    if ctx.slurm is None:
        return skipped(ctx.no_slurm)
    s = ctx.setup
    cfg = dataclasses.replace(s.controller, prometheus_url=s.prometheus_url())
    with tempfile.TemporaryDirectory(prefix="sentinel-preflight-") as scratch:
        journal, source = _journal(cfg.journal, scratch)
        try:
            pool = SparePool(ctx.slurm, journal, cfg, ctx.clock).status()
        except SlurmError as e:
            return problem(f"Slurm did not answer: {e}")
        finally:
            journal.close()
    now = ctx.clock()
    ev: dict[str, Any] = {
        "feature": cfg.spare_feature, "partition": cfg.spare_partition or "(any)",
        "burnin_sources": [source] + ([f"Prometheus {cfg.prometheus_url}"]
                                      if cfg.prometheus_url else []),
        "pool": {p.node: p.why for p in pool}}
    ready = [p for p in pool if p.ready]
    if not pool:
        return problem(f"no node has feature {cfg.spare_feature!r}"
                       + (f" in partition {cfg.spare_partition}" if cfg.spare_partition else "")
                       + " (controller.spare_feature): set it on the spares whose dataset is "
                       "staged", **ev)
    if not ready:
        why = "; ".join(f"{p.node}: {p.why}" for p in pool)
        return problem(f"no ready spare among {len(pool)}: {why}", **ev)
    ages = ", ".join(f"{p.node} (burn-in {(now - (p.burned_in_at or now)) / 3600:.1f} h ago)"
                     for p in ready)
    return ok(f"{len(ready)} of {len(pool)} spare(s) ready: {ages}", **ev)
