"""Run examples/train_gpt.py in tests: start the job, read its log, wait, roll it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_gpt.py"
MAX_STEPS = 350
# Common flags: tiny model, one thread (the CI box is shared), paced steps so the test
# has time to react to the spike while the job is still running.
FLAGS = ["--config", "tiny", "--threads", "1", "--checkpoint-every", "50", "--eval-every", "50",
         "--keep", "5", "--min-step-seconds", "0.02"]


def start_job(run_dir: Path, *extra: str, env: dict | None = None,
              argv_prefix: list[str] | None = None) -> subprocess.Popen:
    """Start the example (tiny model, MAX_STEPS steps) in ``run_dir``; ``extra`` flags win."""
    cmd = [*(argv_prefix or [sys.executable, str(EXAMPLE)]), "--run-dir", str(run_dir),
           "--max-steps", str(MAX_STEPS), *FLAGS, *extra]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def read_log(run_dir: Path, rank: int = 0) -> list[dict]:
    """Return the records of ``RUN_DIR/log/rank{rank}.jsonl`` so far."""
    path = run_dir / "log" / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, rank: int = 0,
                  timeout: float = 120) -> None:
    """Wait until rank ``rank`` logged step ``step``; fail if the job exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["event"] == "step" and e["step"] >= step for e in read_log(run_dir, rank)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"job exited early ({proc.returncode}): {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"job never reached step {step}")


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """Wait for the job to exit 0 and return its output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"job did not finish in {timeout} s: {out}") from None
    assert proc.returncode == 0, out
    return out


def rollback_cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``sentinel rollback --wait 60`` for the tiny job in ``run_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "sentinel", "rollback", "--job", "gpt-tiny", "--run-dir",
         str(run_dir), "--wait", "60", *args],
        capture_output=True, text=True, timeout=90, cwd=ROOT)
