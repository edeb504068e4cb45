"""Issue 13, items 6-9: the training side under junk requests, stray PIDs, damaged files.

Each test reproduces what the probe did to main: a junk rollback request that blocked
every rollback, a PID file that got an unrelated process killed, ``sentinel rollback``
exiting 1 while the job still applied the request, manifest entries pointing outside
the store, a full disk, unloadable state, two writers, lost skip ranges and plan files
that were coerced or crashed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sentinel.train.checkpoint import CheckpointError, CheckpointStore
from sentinel.train.request import (
    REQUEST_DIR,
    RollbackRequest,
    pid_dir,
    read_result,
    read_token,
    submit,
    write_request,
)
from sentinel.train.rollback import RollbackHandler
from sentinel.train.skipplan import SkipPlan, SkipPlanError
from tests.support.services import IN_CI

pytestmark = pytest.mark.adversarial

ROOT = Path(__file__).resolve().parents[2]
JOB_SCRIPT = ROOT / "tests" / "support" / "rollback_job.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# -- item 6: junk rollback requests -----------------------------------------------------
@pytest.fixture
def job(tmp_path: Path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    for s in (0, 10):
        store.save(s, {"w": torch.full((4,), float(s))})
    restored: list[float] = []
    h = RollbackHandler(tmp_path, "job-a", store, SkipPlan(tmp_path),
                        lambda st: restored.append(float(st["w"][0])), poll_interval_s=0.0)
    h.install()
    yield tmp_path, h, restored
    h.uninstall()


def _body(**request: object) -> bytes:
    base = {"id": "0junk", "job": "job-a", "to_step": 10, "created": time.time(), "skip": []}
    return json.dumps({"request": {**base, **request}, "signature": "0" * 64}).encode()


JUNK = {
    "to_step 1e400": _body(to_step=1e400).replace(b"Infinity", b"1e400"),
    "to_step true": _body(to_step=True),
    "to_step 5.5": _body(to_step=5.5),
    "to_step 5000 digits": _body(to_step=0).replace(b'"to_step": 0', b'"to_step": ' +
                                                      b"9" * 5000),
    "created NaN": _body(created=float("nan")),
    "skip 1e400": _body(skip=[[1, 2]]).replace(b"[[1, 2]]", b"[[1e400, 2]]"),
    "skip text": _body(skip="1:2"),
    "unknown key": _body(to_step=10, extra=1),
    "deep": b"[" * 100000 + b"]" * 100000,
    "not utf-8": b'{"request": "\xff\xfe"}',
    "huge": b"{" + b" " * (4 << 20) + b"}",
    "list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("junk", list(JUNK))
def test_junk_request_is_moved_aside_once_and_blocks_nothing(job, caplog, junk):
    run_dir, h, restored = job
    d = run_dir / REQUEST_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / "0junk.json").write_bytes(JUNK[junk])
    good = RollbackRequest("zz-good", "job-a", 0, [], "test", "spike", time.time())
    write_request(run_dir, good, read_token(run_dir))
    caplog.set_level(logging.WARNING)
    outcomes = [h.at_step_boundary(s) for s in range(20, 25)]
    assert [o.to_step for o in outcomes if o is not None] == [0]  # the good one applied
    assert restored == [0.0]
    assert (d / "0junk.rejected").exists() and not (d / "0junk.json").exists()
    assert not [r for r in caplog.records if r.exc_info], "a traceback per poll"
    assert sum("0junk" in r.getMessage() for r in caplog.records) == 1


def test_a_fifo_among_the_requests_does_not_hang_the_job(job):
    run_dir, h, restored = job
    d = run_dir / REQUEST_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.mkfifo(d / "0fifo.json")
    write_request(run_dir, RollbackRequest("zz-good", "job-a", 0, [], "t", "s", time.time()),
                  read_token(run_dir))
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(h.at_step_boundary(20)), daemon=True)
    t.start()
    t.join(10)
    assert out and out[0] is not None, "the boundary check hung on a FIFO"
    assert restored == [0.0]


# -- item 7: who gets signalled, and what `sentinel rollback` reports -------------------
@pytest.fixture
def bystander():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def _start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


@pytest.mark.parametrize("record", ["old format", "forged start time", "no signature"])
def test_a_pid_file_naming_another_process_never_gets_it_signalled(job, bystander, record):
    run_dir, h, _ = job
    h.uninstall()  # the job's own PID file is gone: only the planted one is left
    rec: dict[str, object] = {"pid": bystander.pid, "host": socket.gethostname()}
    if record != "old format":
        rec["start_ticks"] = _start_ticks(bystander.pid) + (1 if "forged" in record else 0)
        rec["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    pid_dir(run_dir).mkdir(parents=True, exist_ok=True)
    (pid_dir(run_dir) / "rank-0.pid").write_text(json.dumps(rec))
    sub = submit(run_dir, "job-a", 10, [], request_id="r1", requested_by="t", reason="x")
    time.sleep(0.3)
    assert bystander.poll() is None, "SIGUSR1 killed a process that is not the job"
    assert sub.signalled == [] and sub.status == "pending"


def _start_job(run_dir: Path, poll_s: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, str(JOB_SCRIPT), str(run_dir), "job-a", str(poll_s),
                          "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
    return p


def _rollback(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sentinel", "rollback", "--job", "job-a",
                           "--run-dir", str(run_dir), "--to-step", "0", *extra],
                          capture_output=True, text=True, timeout=60, env=_env(), check=False)


def _stop(p: subprocess.Popen[str]) -> list[dict[str, object]]:
    p.terminate()
    out, _ = p.communicate(timeout=30)
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_the_job_itself_is_signalled_and_its_answer_reported(tmp_path):
    p = _start_job(tmp_path, poll_s=3600)  # only the signal can bring the request in
    try:
        t0 = time.monotonic()
        r = _rollback(tmp_path, "--wait", "30")
        took = time.monotonic() - t0
    finally:
        done = _stop(p)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "done"
    assert done == [{"from": done[0]["from"], "to": 0, "restored": 0.0}]
    assert took < 20


def test_a_job_that_cannot_be_signalled_still_answers_by_polling(tmp_path):
    """Main exited 1 at once ("no job PID is recorded") while the job applied it later."""
    p = _start_job(tmp_path, poll_s=0.5)
    try:
        for f in pid_dir(tmp_path).glob("*.pid"):
            f.unlink()  # e.g. the ranks run on other nodes
        r = _rollback(tmp_path, "--wait", "30", "--request-id", "retry-me")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "done"
        assert "poll" in r.stderr  # says the job was not signalled and will find it
        again = _rollback(tmp_path, "--wait", "5", "--request-id", "retry-me")
        assert again.returncode == 0, again.stderr  # the same answer, not a second rollback
        assert json.loads(again.stdout)["status"] == "done"
        time.sleep(1.5)
    finally:
        done = _stop(p)
    assert len(done) == 1, done


def test_no_answer_says_the_request_is_still_pending(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(0, {"w": torch.zeros(1)})
    from sentinel.train.rollback import ensure_token

    ensure_token(tmp_path)
    r = _rollback(tmp_path, "--wait", "0.5", "--request-id", "pending-1")
    assert r.returncode == 1
    assert "still pending" in r.stderr and "--request-id pending-1" in r.stderr
    assert read_result(tmp_path, "pending-1") is None


# -- item 8: the checkpoint store ---------------------------------------------------------
def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def test_a_manifest_entry_outside_the_store_is_never_touched(tmp_path):
    d = tmp_path / "ckpt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    store = CheckpointStore(d, keep=1)
    store.save(1, {"w": torch.zeros(2)})
    m = _manifest(d)
    m["checkpoints"].insert(0, {**m["checkpoints"][0], "step": 0, "file": "../victim.txt"})
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"'\.\./victim\.txt'.*step_000000000\.pt"):
        store.save(2, {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="victim"):
        store.prune()
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"step": True}, "'step' is True"),
    ({"size": -1}, "'size' is -1"),
    ({"sha256": "zz"}, "'sha256'"),
    ({"time": "yesterday"}, "'time'"),
])
def test_bad_manifest_entries_are_clear_errors(tmp_path, change, message):
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": torch.zeros(2)})
    m = _manifest(tmp_path)
    m["checkpoints"][0].update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=message):
        store.checkpoints()


@pytest.mark.parametrize(("raw", "message"), [
    ({"version": 99, "checkpoints": [], "pins": {}}, "version 99"),
    ({"version": 1, "checkpoints": [], "pins": {"inc": "3"}}, "pin 'inc'"),
])
def test_bad_manifests_are_clear_errors(tmp_path, raw, message):
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message):
        CheckpointStore(tmp_path, writer=False).checkpoints()


def test_temporary_manifests_of_dead_writers_are_cleaned(tmp_path):
    CheckpointStore(tmp_path).save(1, {"w": torch.zeros(2)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30)
    (tmp_path / f".manifest.json.tmp-{int(dead.stdout)}").write_text("{")
    (tmp_path / f".manifest.json.tmp-{os.getpid()}").write_text("{")  # alive: kept
    CheckpointStore(tmp_path)
    assert sorted(p.name for p in tmp_path.glob(".manifest*")) == [
        f".manifest.json.tmp-{os.getpid()}"]


@pytest.mark.parametrize(("value", "where", "kind"), [
    (np.float64(2.5), "state['rng']['numpy'][1]", "numpy.float64"),
    (pathlib.Path("/data/shard-7"), "state['rng']['numpy'][1]", "PosixPath"),
])
def test_state_that_cannot_be_loaded_back_is_refused_at_save(tmp_path, value, where, kind):
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": torch.zeros(2)})
    state = {"w": torch.ones(2), "rng": {"numpy": ["MT19937", value]}}
    with pytest.raises(CheckpointError) as e:
        store.save(2, state)
    assert where in str(e.value) and kind in str(e.value)
    assert [c.step for c in store.checkpoints()] == [1]
    assert sorted(p.name for p in tmp_path.glob("*step*")) == ["step_000000001.pt"]


DISK_FULL = textwrap.dedent("""
    import json, os, subprocess, sys, torch
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore
    d = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d], check=True)
    store = CheckpointStore(d)
    store.save(1, {"w": torch.zeros(1000)})
    out = {}
    for name, state in [
        ("too big", {"w": torch.zeros(1 << 20)}),  # 4 MiB of tensors: refused before writing
        ("not tensors", {"notes": "x" * (3 << 20)}),  # looks small: the write hits ENOSPC
    ]:
        try:
            store.save(2, state)
            out[name] = "saved"
        except CheckpointError as e:
            out[name] = str(e)
    out["files"] = sorted(os.listdir(d))
    out["steps"] = [c.step for c in store.checkpoints()]
    print(json.dumps(out))
""")


def test_a_full_disk_says_where_and_how_much(tmp_path):
    if shutil.which("unshare") is None:
        (pytest.fail if IN_CI else pytest.skip)("unshare not found: install util-linux")
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["unshare", "-rm", sys.executable, "-c", DISK_FULL, str(d)],
                       capture_output=True, text=True, timeout=120, env=_env(), check=False)
    if r.returncode != 0 and "mount" in r.stderr and not IN_CI:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for name in ("too big", "not tensors"):
        assert out[name].startswith(f"disk full at {d}"), out[name]
        assert "bytes needed" in out[name]
    assert "after writing" in out["not tensors"]
    assert out["steps"] == [1]
    assert out["files"] == ["manifest.json", "manifest.lock", "step_000000001.pt", "writer.lock"]


SECOND_WRITER = textwrap.dedent("""
    import sys, time, torch
    from sentinel.train.checkpoint import CheckpointStore
    store = CheckpointStore(sys.argv[1], keep=3)
    print("ready", flush=True)
    for step in range(100, 130):
        store.save(step, {"w": torch.zeros(8)})
    time.sleep(30)
""")


def test_a_second_writer_is_refused(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", SECOND_WRITER, str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        with pytest.raises(CheckpointError, match=f"already written by PID {p.pid}"):
            CheckpointStore(tmp_path, keep=3)
        reader = CheckpointStore(tmp_path, writer=False)  # readers are welcome
        reader.checkpoints()
    finally:
        p.kill()
        p.wait()
    store = CheckpointStore(tmp_path, keep=3)  # the writer is gone: the lock with it
    store.save(200, {"w": torch.zeros(8)})
    assert len(list(tmp_path.glob("step_*.pt"))) <= 4


# -- item 9: the skip plan ----------------------------------------------------------------
def _add_ranges(run_dir: str, parity: int, n: int) -> None:
    plan = SkipPlan(run_dir)
    for i in range(n):
        k = 2 * i + parity
        plan.add([(k * 10, k * 10 + 5)], added_by=f"writer{parity}", reason="race")


def test_two_concurrent_writers_lose_no_range(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_ranges, args=(str(tmp_path), k, 100)) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(SkipPlan(tmp_path).ranges) == 200


def test_a_range_that_did_not_reach_the_disk_is_not_kept(tmp_path):
    plan = SkipPlan(tmp_path)
    plan.add([(0, 5)], added_by="t", reason="x")
    (tmp_path / f".skip_plan.json.tmp-{os.getpid()}").mkdir()  # the next write fails
    with pytest.raises(SkipPlanError, match="cannot save"):
        plan.add([(10, 20)], added_by="t", reason="x")
    assert [r.text() for r in plan.ranges] == ["0:5"]
    assert plan.is_skipped(12) is False


@pytest.mark.parametrize(("text", "message"), [
    ('{"version": 1, "ranges": [{"start": 1e400, "end": 5}]}', "'start' is inf"),
    ('{"version": 1, "ranges": [{"start": true, "end": 5}]}', "'start' is True"),
    ('{"version": 1, "ranges": [{"start": 1.5, "end": 5}]}', "'start' is 1.5"),
    ('{"version": 99, "ranges": []}', "version 99"),
    ('{"ranges": []}', "version None"),
    ('{"version": 1, "ranges": [{"start": 1, "end": 5, "colour": 1}]}', "unknown key 'colour'"),
    ('{"version": 1, "ranges": [{"start": 1, "end": 5, "time": 1e400}]}', "'time'"),
    ('{"version": 1, "ranges": [{"start": 1, "end": 5, "reason": 7}]}', "'reason' is 7"),
])
def test_bad_plan_files_are_refused_with_a_clear_error(tmp_path, text, message):
    (tmp_path / "skip_plan.json").write_text(text)
    with pytest.raises(SkipPlanError, match=message):
        SkipPlan(tmp_path)
