"""What every check gets: the loaded config, Slurm (or why there is none), injected seams."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.preflight.config import Setup

# Why a check that needs to know the job cannot run: what to set.
NO_CHECKPOINT_DIR = ("no checkpoint directory known: set jobs[].run_dir or "
                     "jobs[].checkpoint_dir (with --job), preflight.checkpoint_dir or "
                     "--checkpoint-dir")


@dataclass
class Context:
    """The checks' view of this run: config, Slurm, and the seams tests replace."""

    setup: Setup
    slurm: Any | None = None          # sentinel.controller.slurm.Slurm
    no_slurm: str = ""                # why slurm is None
    # argv of the local burn-in (None: `python -m sentinel burnin --json` of this install)
    burnin_argv: list[str] | None = None
    # where NVIDIA device nodes appear (a parameter so a test can point it elsewhere)
    dev: Path = Path("/dev")
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    notes: list[str] = field(default_factory=list)


def human_bytes(n: float) -> str:
    """Return ``n`` bytes as ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable: TiB returns above


def wait_until(ctx: Context, what: Callable[[], Any], timeout: float,
               interval: float = 0.5) -> Any:
    """Call ``what`` every ``interval`` s until it returns a true value or ``timeout`` passes.

    Returns that value, or the last (false) one.
    """
    deadline = ctx.monotonic() + timeout
    while True:
        got = what()
        if got or ctx.monotonic() >= deadline:
            return got
        ctx.sleep(interval)
