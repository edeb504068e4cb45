"""The project's own static checks, so `make test` (and CI) fail on a lint or type error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_ruff_is_clean():
    r = _run("ruff", "check", "sentinel", "tests", "bench", "examples", "scripts", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    """mypy over the package (strict on rules/, train/, as pyproject.toml configures)."""
    r = _run("mypy", "sentinel", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
