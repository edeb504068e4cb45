"""kill -9 of the controller at every step boundary of rollback_skip, against the real job.

Each case runs the example with its corrupted shard through a real agent, and
``python -m sentinel controller run --config F`` with the test-only crash hook set to one
boundary (``SENTINEL_CONTROLLER_TESTING_CRASH_AT``). The controller dies there by
SIGKILL; a second one, started on the same journal, must finish the work: the job's log
shows exactly one rollback, to the planned checkpoint, with exactly the planned batches
skipped, and the action is verified. ``rollback_skip/intent``, ``submit/before``,
``submit/after`` and ``verify/before`` are the boundaries where doing twice or
forgetting would show (nothing done, the request unwritten, answered but unjournaled,
answered and journaled); the pin's two ends and the verification's end complete the set.
"""

from __future__ import annotations

import signal

import pytest

from sentinel.controller.executor import CRASH_ENV
from sentinel.controller.journal import Journal
from tests.support.agent import run_agent
from tests.support.example_job import read_log
from tests.support.rollback_e2e import (
    check_job,
    config,
    run_controller,
    start_job,
    wait_for,
    write_config,
)
from tests.support.services import stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Each case trains a job to its spike and past its rollback: 15-50 s on the 2-core CI box.
# The boundaries where the world differs run in `make test`; the three whose world is the
# same as a neighbour's (before and after the pin, after the verification) are marked
# `exhaustive`, which `make test` deselects (not skips): `make test-exhaustive` runs them.
_MORE = pytest.mark.exhaustive
POINTS = ["rollback_skip/intent",
          pytest.param("rollback_skip/pin/before", marks=_MORE),
          pytest.param("rollback_skip/pin/after", marks=_MORE),
          "rollback_skip/submit/before", "rollback_skip/submit/after",
          "rollback_skip/verify/before",
          pytest.param("rollback_skip/verify/after", marks=_MORE)]


def _final(db):
    j = Journal(db)
    try:
        acts = j.actions()
        return acts[-1] if acts and acts[-1].state in ("verified", "failed") else None
    finally:
        j.close()


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_a_boundary_the_restarted_controller_finishes(tmp_path, point, gpt_control):
    run_dir = tmp_path / "run"
    log = tmp_path / "controller.log"
    with run_agent(tmp_path / "agent") as agent:
        cfg = write_config(tmp_path / "sentinel.yml", config(tmp_path, run_dir, agent.url))
        job = start_job(run_dir, agent.socket_path)
        first = run_controller(cfg, {CRASH_ENV: point}, log)
        second = None
        try:
            wait_for(f"the controller killed at {point}", lambda: first.poll() is not None,
                     150, (job,))
            assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            second = run_controller(cfg, log=log)
            action = wait_for("the action's end", lambda: _final(tmp_path / "controller.db"),
                              120, (job, second))
            stop(job)  # verified: the rest of the run is the end-to-end test's subject
        finally:
            for p in (first, second, job):
                if p is not None:
                    stop(p)
    assert action.state == "verified", (action.error, log.read_text()[-3000:])
    j = Journal(tmp_path / "controller.db")
    [only] = j.actions()  # one action, whatever the restart saw again
    assert [(s.name, s.state) for s in j.steps(only.id)] == [("pin", "done"), ("submit", "done")]
    if point.endswith("/after") and "verify" not in point:
        step = point.split("/")[1]
        assert j.step(only.id, step).outcome.get("reconciled") is True
    # Exactly one rollback in the job, to the planned checkpoint, the planned batches skipped.
    assert len([e for e in read_log(run_dir) if e["event"] == "rollback"]) == 1
    check_job(run_dir, gpt_control(), only.plan, complete=False)
    assert "testing crash hook: SIGKILL at " + point in log.read_text()
