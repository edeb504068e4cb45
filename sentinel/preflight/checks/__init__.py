"""The pre-flight checks, one module each, registered in :data:`CHECKS` in run order.

Each module has ``TITLE`` and ``check(ctx) -> Result``; a check never raises (the runner
turns an unexpected exception into a problem naming it). Adding a check means adding a
module, a line here and its name in ``sentinel.preflight.config.CHECK_NAMES``.
"""

from __future__ import annotations

from collections.abc import Callable

from sentinel.preflight.checks import (
    burnin,
    checkpoint,
    config,
    prometheus,
    reporter,
    requeue,
    spare,
    storage,
)
from sentinel.preflight.checks.base import Context
from sentinel.preflight.report import Result

Check = Callable[[Context], Result]

CHECKS: list[tuple[str, str, Check]] = [
    ("config", config.TITLE, config.check),
    ("burnin", burnin.TITLE, burnin.check),
    ("checkpoint", checkpoint.TITLE, checkpoint.check),
    ("storage", storage.TITLE, storage.check),
    ("requeue", requeue.TITLE, requeue.check),
    ("prometheus", prometheus.TITLE, prometheus.check),
    ("reporter", reporter.TITLE, reporter.check),
    ("spare", spare.TITLE, spare.check),
]
