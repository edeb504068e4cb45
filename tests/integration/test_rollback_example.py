"""The CPU proof of issue 3: the real example, a bad batch, a real `sentinel rollback`."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

import pytest

from sentinel import protocol
from tests.support.example_job import (
    EXAMPLE,
    MAX_STEPS,
    finish,
    read_log,
    rollback_cli,
    start_job,
    wait_for_step,
)

BAD = [160, 161, 162]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Agent:
    """A stand-in for the agent's datagram socket: collects the job's events."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.events: list[tuple[str, dict]] = []
        self.steps = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                r = protocol.decode(self.sock.recv(65536))
            except (TimeoutError, protocol.DatagramError):
                continue
            if isinstance(r, protocol.EventReport):
                self.events.append((r.kind, r.fields))
            else:
                self.steps += 1

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close()


def steps_by_step(log: list[dict]) -> dict[int, dict]:
    """The last record of each step (after a rollback, the new timeline's)."""
    return {e["step"]: e for e in log if e["event"] == "step"}


def final_eval(log: list[dict]) -> float:
    return [e for e in log if e["event"] == "eval" and e["step"] == MAX_STEPS][-1]["eval_loss"]


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("control")
    finish(start_job(run_dir))
    return read_log(run_dir)


def check_rolled_back(log: list[dict], control: list[dict], to_step: int) -> None:
    pids = {e["pid"] for e in log}
    assert len(pids) == 1, "the job restarted instead of rolling back in-process"
    (rb,) = [e for e in log if e["event"] == "rollback"]
    assert rb["to_step"] == to_step and rb["from_step"] > BAD[-1]
    before = log[: log.index(rb)]
    after = log[log.index(rb) + 1 :]
    ctl = steps_by_step(control)

    # The bad batches were trained on before the rollback, and they spiked the loss.
    first = steps_by_step(before)
    assert [e["batch"] for e in before if e["event"] == "inject"] == BAD
    assert first[BAD[0]]["loss"] > 2.0 * ctl[BAD[0]]["loss"]

    # After it: exactly the bad batches skipped, every other batch in order, once.
    assert [e["batch"] for e in after if e["event"] == "skip"] == BAD
    assert not [e for e in after if e["event"] == "inject"]
    batches = [(e["step"], e["batch"]) for e in after if e["event"] == "step"]
    expected = [(s, s if s < BAD[0] else s + len(BAD)) for s in range(to_step, MAX_STEPS)]
    assert batches == expected

    # No spike again, and a few hundred steps on the loss is where the control run's is.
    new = steps_by_step(after)
    worst = max(new[s]["loss"] / ctl[s]["loss"] for s in range(to_step, MAX_STEPS))
    assert worst < 1.5, f"loss spiked again after the rollback ({worst:.2f}x control)"
    assert abs(final_eval(log) / final_eval(control) - 1) < 0.03
    tail = range(MAX_STEPS - 50, MAX_STEPS)
    mean_new = sum(new[s]["loss"] for s in tail) / len(tail)
    mean_ctl = sum(ctl[s]["loss"] for s in tail) / len(tail)
    assert abs(mean_new / mean_ctl - 1) < 0.03


def test_rollback_in_process_skips_the_bad_batches(tmp_path, control):
    agent = Agent(tmp_path / "agent.sock")
    run_dir = tmp_path / "run"
    proc = start_job(run_dir, "--inject-bad-batch", ",".join(map(str, BAD)),
                     env={"SENTINEL_AGENT_SOCKET": str(agent.path)})
    try:
        wait_for_step(proc, run_dir, BAD[-1] + 1)  # the spike is visible in the log
        cli = rollback_cli(run_dir, "--before-step", str(BAD[0]),
                           "--skip", f"{BAD[0]}:{BAD[-1] + 1}", "--reason", "loss spike")
        assert cli.returncode == 0, cli.stderr
        result = json.loads(cli.stdout)
        assert result["status"] == "done" and result["to_step"] == 150
        assert result["pid"] == proc.pid
        finish(proc)
    finally:
        proc.kill()
        agent.close()
    check_rolled_back(read_log(run_dir), control, to_step=150)
    done = [f for k, f in agent.events if k == "rollback_done"]
    assert len(done) == 1 and done[0]["to_step"] == 150 and done[0]["total_s"] > 0
    assert agent.steps > MAX_STEPS
    plan = json.loads((run_dir / "skip_plan.json").read_text())
    assert [(r["start"], r["end"]) for r in plan["ranges"]] == [(160, 163)]


def test_corrupted_newest_checkpoint_uses_the_previous(tmp_path, control):
    run_dir = tmp_path / "run"
    proc = start_job(run_dir, "--inject-bad-batch", ",".join(map(str, BAD)))
    try:
        wait_for_step(proc, run_dir, BAD[-1] + 1)
        ckpt = run_dir / "checkpoints" / "step_000000150.pt"
        data = bytearray(ckpt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ckpt.write_bytes(bytes(data))
        refused = rollback_cli(run_dir, "--to-step", "150", "--skip", "160:163")
        assert refused.returncode == 1 and "checkpoint step 150 refused" in refused.stderr
        cli = rollback_cli(run_dir, "--before-step", "160", "--skip", "160:163")
        assert cli.returncode == 0, cli.stderr
        assert "checkpoint step 150 does not verify" in cli.stderr
        assert json.loads(cli.stdout)["to_step"] == 100
        finish(proc)
    finally:
        proc.kill()
    check_rolled_back(read_log(run_dir), control, to_step=100)


KILL_AT_RENAME = """
import os, runpy, signal, sys
import sentinel.train.checkpoint as ck
real = os.replace
def replace(src, dst):
    if ".step_000000100.pt.tmp-" in str(src):
        os.kill(os.getpid(), signal.SIGKILL)  # written and fsynced, not yet renamed
    return real(src, dst)
ck.os.replace = replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_between_write_and_rename_resumes_from_the_previous(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_job(run_dir, argv_prefix=[sys.executable, "-c", KILL_AT_RENAME, str(EXAMPLE)])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -9, out
    partial = list((run_dir / "checkpoints").glob(".step_000000100.pt.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0

    proc = start_job(run_dir, "--max-steps", "120")  # a Slurm requeue, say
    finish(proc)
    log = read_log(run_dir)
    (resume,) = [e for e in log if e["event"] == "resume"]
    assert resume["checkpoint"] == 50 and resume["batch"] == 50
    second = [e for e in log if e["pid"] == resume["pid"] and e["event"] == "step"]
    assert [(e["step"], e["batch"]) for e in second] == [(s, s) for s in range(50, 120)]
    assert not list((run_dir / "checkpoints").glob(".step_*tmp*"))
