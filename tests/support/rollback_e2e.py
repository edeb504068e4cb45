"""The controller's rollback_skip against the real example: the job, its config, the checks.

The job is examples/train_gpt.py (tiny) reporting to a real agent, with a corrupted
shard injected: :data:`BAD` is 60 consecutive batches of random bytes. One bad batch, or
three, is a spike the model shakes off within 50 steps (``recoverable_fast``, which the
policy only tells about: docs/DESIGN.md, Controller -> rollback_skip); a stretch longer
than that keeps the loss out of band for more than 50 steps and is ``recoverable_slow``,
which the default policy rolls back.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.example_job import ROOT, read_log
from tests.support.example_job import start_job as _start

JOB = "gpt-tiny"
BAD = list(range(110, 170))
MAX_STEPS = 240
CHECKPOINT_EVERY = 50
# The run without the rollback is 11% above the control over its last 50 steps (measured:
# the 60 bad batches' damage lasts); the rolled-back run must be within this.
TAIL_STEPS = 50
TAIL_TOLERANCE = 0.03


def start_job(run_dir: Path, socket_path: str, *, bad: bool = True, extra: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the example (MAX_STEPS steps) reporting to the agent at ``socket_path``."""
    flags = ["--max-steps", str(MAX_STEPS), "--checkpoint-every", str(CHECKPOINT_EVERY),
             "--eval-every", "1000", "--min-step-seconds", "0"]
    if bad:
        flags += ["--inject-bad-batch", ",".join(map(str, BAD))]
    return _start(run_dir, *flags, *extra,
                  env={"SENTINEL_AGENT_SOCKET": socket_path, **(env or {})})


def config(tmp: Path, run_dir: Path, agent_url: str, *, slack: Any = None,
           token_file: Path | None = None, **controller: Any) -> dict[str, Any]:
    """Return a controller config: one job, act mode, a fast loop, Slack if given."""
    data: dict[str, Any] = {
        "controller": {"journal": str(tmp / "controller.db"), "scheduler": "none",
                       "interval_seconds": 0.5, "listen_address": "",
                       "rollback_answer_seconds": 60, "verify_steps": 100,
                       "verify_timeout_seconds": 120, **controller},
        "policy": {"rollback_skip_mode": "act"},
        "jobs": [{"name": JOB, "run_dir": str(run_dir), "agent": agent_url}],
    }
    if slack is not None and token_file is not None:
        data["notify"] = {"slack_token_file": str(token_file), "channel": slack.channel_id,
                          "base_url": slack.api_url, "queue_dir": str(tmp / "outbox"),
                          "timeout_s": 5}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config file."""
    path.write_text(yaml.safe_dump(data))
    return path


def run_controller(cfg: Path, env: dict[str, str] | None = None, log: Path | None = None
                   ) -> subprocess.Popen[str]:
    """Start ``python -m sentinel controller run --config cfg`` (stderr to ``log``)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    out = open(log, "a") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "sentinel", "--log-level", "info",
                             "controller", "run", "--config", str(cfg)],
                            cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(what: str, cond: Any, timeout: float, procs: tuple[Any, ...] = ()) -> Any:
    """Poll ``cond()`` until truthy; fail naming ``what`` (or a process that exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        for p in procs:
            if p.poll() is not None:
                out = p.stdout.read() if p.stdout else ""
                raise AssertionError(f"{what}: a process exited ({p.returncode}) first: {out}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def steps_by_step(log: list[dict]) -> dict[int, dict]:
    """The last record of each step (after a rollback, the new timeline's)."""
    return {e["step"]: e for e in log if e["event"] == "step"}


def check_job(run_dir: Path, control: list[dict], plan: dict[str, Any], *,
              complete: bool = True) -> dict[str, Any]:
    """Check the rolled-back job's log against the plan and the control run; return figures.

    Exactly one rollback, in-process, to the planned checkpoint; after it, exactly the
    planned batches skipped and every other batch trained once, in order; the loss back
    where the control run's is (``complete``: the job ran to its end; otherwise only the
    steps it ran so far are checked, and the loss up to there).
    """
    log = read_log(run_dir)
    assert len({e["pid"] for e in log}) == 1, "the job restarted instead of rolling back"
    (rb,) = [e for e in log if e["event"] == "rollback"]
    to_step = plan["to_step"]
    assert rb["to_step"] == to_step and rb["request"] == plan["request_id"]
    after = log[log.index(rb) + 1:]
    planned = [b for a, e in plan["skip"] for b in range(a, e)]
    assert [e["batch"] for e in after if e["event"] == "skip"] == planned
    assert not [e for e in after if e["event"] == "inject"], "a bad batch was trained again"
    start, n = planned[0], len(planned)
    got = [(e["step"], e["batch"]) for e in after if e["event"] == "step"]
    end = MAX_STEPS if complete else to_step + len(got)
    assert end > start, "the job never got past the skipped batches"
    assert got == [(s, s if s < start else s + n) for s in range(to_step, end)]
    new, ctl = steps_by_step(after), steps_by_step(control)
    before = steps_by_step(log[:log.index(rb)])
    # Same seed: until the first bad batch the two runs are the same run.
    assert all(abs(before[s]["loss"] - ctl[s]["loss"]) < 1e-6 for s in range(BAD[0]))
    assert before[BAD[0]]["loss"] > 1.5 * ctl[BAD[0]]["loss"]  # the spike was real
    worst = max(new[s]["loss"] / ctl[s]["loss"] for s in range(to_step, end))
    assert worst < 1.5, f"the loss spiked again after the rollback ({worst:.2f}x control)"
    if not complete:
        return {"worst": worst, "rollback": rb}
    tail = range(MAX_STEPS - TAIL_STEPS, MAX_STEPS)
    ratio = statistics.fmean(new[s]["loss"] for s in tail) / statistics.fmean(
        ctl[s]["loss"] for s in tail)
    assert abs(ratio - 1) < TAIL_TOLERANCE, f"last {TAIL_STEPS} steps at {ratio:.3f}x control"
    return {"worst": worst, "tail_ratio": ratio, "rollback": rb}


def journal_dump(db: Path) -> str:
    """Return everything the journal holds, as text (for the secret grep)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return json.dumps({t: [list(r) for r in con.execute(f"SELECT * FROM {t}")]  # noqa: S608
                           for t in tables}, default=str)
    finally:
        con.close()
