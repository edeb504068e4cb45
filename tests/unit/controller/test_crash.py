"""kill -9 at every boundary of an action: resumed after restart, nothing done twice or lost.

The subject is the executor and the journal (the toy action's world is a file, its
``check`` reads it); the Slurm and rollback actions have the same test against the real
world (tests/integration/test_controller_*).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.controller.executor import CRASH_ENV
from sentinel.controller.journal import Journal
from tests.support.controller import TOY_STEPS

ROOT = Path(__file__).resolve().parents[3]
POINTS = (["rollback_skip/intent"]
          + [f"rollback_skip/{s}/{w}" for s in TOY_STEPS for w in ("before", "after")]
          + ["rollback_skip/verify/before", "rollback_skip/verify/after"])


def drive(tmp: Path, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "tests.support.controller_driver", str(tmp)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_boundary_then_restart(tmp_path, point):
    first = drive(tmp_path, point)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = drive(tmp_path, None)
    assert second.returncode == 0, second.stderr
    j = Journal(tmp_path / "controller.db")
    [action] = j.actions()
    assert action.state == "verified"
    lines = (tmp_path / "world").read_text().splitlines()
    # Each step's side effect exactly once, in order, by that one action.
    assert lines == [f"{action.id} {s}" for s in TOY_STEPS]
    assert [s.state for s in j.steps(action.id)] == ["done"] * len(TOY_STEPS)
    if point.endswith("/after") and "verify" not in point:
        step = point.split("/")[1]
        assert j.step(action.id, step).outcome.get("reconciled") is True
