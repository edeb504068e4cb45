"""Run the controller against the local Slurm until its actions end (the Slurm tests' subject).

``python -m tests.support.slurm_driver CONFIG.yml FINDINGS.jsonl WRITES.jsonl`` wires the
controller exactly as ``sentinel controller run`` does (sentinel.controller.daemon.build)
except for the detector: a scripted one hands it the findings (again after a restart, as
a restarted rules engine would). Every Slurm command that changes the cluster is appended
to WRITES.jsonl before it runs, so the kill -9 tests can count them. With
SENTINEL_CONTROLLER_TESTING_CRASH_AT set, the executor's hook kills it at that boundary.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.config import read_yaml_file
from sentinel.controller.daemon import Parts, build, load_configs
from sentinel.controller.slurm import Completed, Slurm, is_write, subprocess_runner
from sentinel.rules.finding import Finding
from tests.support.controller import ScriptedDetector

ROOT = Path(__file__).resolve().parents[2]


class RecordingRunner:
    """Run Slurm commands; append each that changes the cluster to a JSON-lines file first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, argv: list[str], timeout: float, env: dict[str, str]) -> Completed:
        if is_write(argv):
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"argv": argv, "pid": os.getpid(), "time": time.time()})
                         + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return subprocess_runner(argv, timeout, env)


def writes(path: Path) -> list[list[str]]:
    """Return the recorded write commands, tool names without their directory."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        argv = json.loads(line)["argv"]
        out.append([os.path.basename(argv[0]), *argv[1:]])
    return out


def burnin_command(verdict: str) -> list[str]:
    """Return controller.burnin_command running the REPLAY of a recorded H200 burn-in."""
    return ["srun", "--reservation={reservation}", "-w", "{node}", "-N1", "--exclusive",
            "--time={minutes}", sys.executable, "-m", "sentinel.burnin.replay", verdict]


def config(tmp: Path, *, verdict: str = "pass", policy: dict[str, Any] | None = None,
           jobs: list[dict[str, Any]] | None = None, **controller: Any) -> dict[str, Any]:
    """Return a config file's data: by default the job gpt-7b in reservation train; act mode."""
    ctl = {"journal": str(tmp / "controller.db"), "scheduler": "slurm", "listen_address": "",
           "interval_seconds": 0.5, "burnin_command": burnin_command(verdict),
           "burnin_timeout_seconds": 60, "requeue_confirm_seconds": 60,
           "slurm_timeout_seconds": 30, "spare_feature": "staged"} | controller
    return {"controller": ctl,
            "policy": {"spare_swap_mode": "act", "burnin_mode": "act"} | (policy or {}),
            "jobs": jobs if jobs is not None else [
                {"name": "gpt-7b", "slurm_job": "gpt-7b", "reservation": "train"}]}


def make(file_data: dict[str, Any], writes_path: Path, detector: Any,
         conf: str | None = None) -> Parts:
    """Build the controller as the daemon does, with a recording Slurm runner."""
    cfg, _, _ = load_configs(file_data, env={})
    slurm = Slurm.from_config(cfg, runner=RecordingRunner(writes_path))
    if conf:
        slurm.conf = conf
    return build(file_data, env={}, slurm=slurm, detector=detector, notifier=None)


def run_until_done(parts: Parts, timeout: float = 120.0) -> None:
    """Resume, then cycle until no action is unfinished or running (two quiet cycles)."""
    ctl = parts.controller
    ctl.resume()
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        ctl.cycle()
        ctl.executor.wait_idle(timeout=1.0)
        busy = bool(ctl.journal.unfinished_actions()) or bool(ctl.executor.running())
        quiet = 0 if busy else quiet + 1
        if quiet >= 2 and ctl.journal.actions():
            return
        time.sleep(0.1)
    raise TimeoutError(f"actions still unfinished after {timeout:.0f} s: "
                       f"{[(a.action, a.state) for a in ctl.journal.unfinished_actions()]}")


def main(argv: list[str]) -> int:
    """Drive the controller from a config file and findings until its actions end."""
    cfg_path, findings_path, writes_path = (Path(a) for a in argv[:3])
    findings = [Finding.from_dict(json.loads(line))
                for line in findings_path.read_text().splitlines() if line.strip()]
    parts = make(read_yaml_file(cfg_path), writes_path, ScriptedDetector([findings]))
    try:
        run_until_done(parts)
    finally:
        parts.controller.stop()
    for a in parts.journal.actions():
        print(a.id, a.action, a.state, a.error)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
