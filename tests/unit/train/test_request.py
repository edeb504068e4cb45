import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.request import (
    RollbackError,
    RollbackRequest,
    choose_target,
    read_result,
    read_token,
    request_path,
    result_path,
    sign,
    status,
    submit,
    wait_result,
    write_pid_file,
)
from sentinel.train.rollback import RollbackHandler, ensure_token
from sentinel.train.skipplan import SkipPlan


@pytest.fixture
def run_dir(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    for s in (0, 10, 20):
        store.save(s, {"w": torch.full((4,), float(s))})
    ensure_token(tmp_path)
    return tmp_path


@pytest.fixture
def sigusr1():
    """Record the SIGUSR1s this process gets, and record its PID as the job's rank 0."""
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(a[0]))
    yield got
    signal.signal(signal.SIGUSR1, old)


def _record_pid(run_dir, rank, pid, host=None):
    write_pid_file(run_dir, rank, read_token(run_dir), pid=pid, host=host)


def _submit(run_dir, rid="r1", to_step=10, skip=((25, 30),), **kw):
    return submit(run_dir, "job-a", to_step, list(skip), request_id=rid, requested_by="ctl",
                  reason="spike", **kw)


def _handler(run_dir):
    h = RollbackHandler(run_dir, "job-a", CheckpointStore(run_dir / "checkpoints"),
                        SkipPlan(run_dir), lambda state: None, poll_interval_s=0.0)
    h.install()
    return h


def test_importing_the_request_side_does_not_import_torch():
    code = "import sentinel.train.request, sys; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_choose_target_takes_the_newest_verified_at_or_before(run_dir, caplog):
    ckpt = run_dir / "checkpoints"
    assert choose_target(ckpt) == 20
    assert choose_target(ckpt, before_step=19) == 10
    assert choose_target(CheckpointStore(ckpt, writer=False), to_step=0) == 0
    f = ckpt / "step_000000010.pt"
    f.write_bytes(f.read_bytes()[:-5])
    assert choose_target(ckpt, before_step=19) == 0  # the damaged one is passed over
    assert "checkpoint step 10 does not verify" in caplog.text


@pytest.mark.parametrize(
    ("kw", "damage", "message"),
    [
        ({"to_step": 15}, False, "no checkpoint for step 15 (checkpoints in "),
        ({"to_step": 10}, True, "checkpoint step 10 refused: file "),
        ({"before_step": -1}, False, "at or before step -1 in "),
        ({"before_step": 10}, True, "(checkpoints: 0, 10, 20); 0, 10 did not verify"),
        ({"to_step": 1, "before_step": 2}, False, "give to_step or before_step, not both"),
    ],
)
def test_choose_target_says_why_there_is_none(run_dir, kw, damage, message):
    if damage:
        for s in (0, 10):
            f = run_dir / "checkpoints" / f"step_{s:09d}.pt"
            f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(RollbackError) as e:
        choose_target(run_dir / "checkpoints", **kw)
    assert message in str(e.value)


def test_choose_target_in_an_empty_directory_says_there_is_no_checkpoint(tmp_path):
    with pytest.raises(RollbackError, match="checkpoints: none.*is this its checkpoint dir"):
        choose_target(tmp_path)


def test_choose_target_refuses_an_abandoned_checkpoint(run_dir):
    store = CheckpointStore(run_dir / "checkpoints")
    store.pin(20, "inc-1")  # kept for the incident, but off the timeline
    store.abandon_after(10, "rollback r0")
    with pytest.raises(RollbackError, match="step 20 was abandoned"):
        choose_target(run_dir / "checkpoints", to_step=20)


def test_submit_writes_a_signed_request_and_signals_this_hosts_ranks(run_dir, sigusr1):
    _record_pid(run_dir, 0, os.getpid())
    sub = _submit(run_dir, now=1234.0)
    assert (sub.already_existed, sub.status, sub.signalled, sub.missing) == (
        False, "pending", [os.getpid()], [])
    assert sigusr1 == [signal.SIGUSR1]
    raw = json.loads(sub.path.read_text())
    req = RollbackRequest.from_json(raw["request"])
    assert req == RollbackRequest("r1", "job-a", 10, [(25, 30)], "ctl", "spike", 1234.0)
    assert raw["signature"] == sign(req, (run_dir / ".sentinel/token").read_text().strip()
                                    .encode())
    # Readable by the job, which may run as another user (it holds no secret).
    assert sub.path.stat().st_mode & 0o777 == 0o644


def test_submit_is_idempotent_for_a_request_id(run_dir, sigusr1):
    _record_pid(run_dir, 0, os.getpid())
    first = _submit(run_dir, now=1000.0)
    before = first.path.read_bytes()
    again = _submit(run_dir, now=2000.0)  # a controller retrying after a crash
    assert (again.already_existed, again.status, again.signalled) == (True, "pending", [])
    assert again.request == first.request and again.request.created == 1000.0
    assert first.path.read_bytes() == before  # not written twice
    assert sigusr1 == [signal.SIGUSR1]  # not signalled twice
    asked = _submit(run_dir, resignal=True)
    assert asked.signalled == [os.getpid()] and sigusr1 == [signal.SIGUSR1] * 2
    with pytest.raises(RollbackError, match="'r1' was already used for another rollback"):
        _submit(run_dir, to_step=20)
    assert len(list((run_dir / "rollback/requests").iterdir())) == 1  # no temporary left


def test_status_follows_a_request_through_the_job(run_dir):
    assert status(run_dir, "r1") == "absent"
    _submit(run_dir, signal=False)
    assert status(run_dir, "r1") == "pending"
    h = _handler(run_dir)
    try:
        assert h.at_step_boundary(24) is not None  # the job applies it
        assert status(run_dir, "r1") == "done"
        assert not request_path(run_dir, "r1").exists()
        # Answered: submitting the same id again writes nothing and signals nobody.
        sub = _submit(run_dir)
        assert (sub.already_existed, sub.status, sub.signalled) == (True, "done", [])
        assert not request_path(run_dir, "r1").exists()
        with pytest.raises(RollbackError, match="already used to roll back to step 10"):
            _submit(run_dir, to_step=0)
        _submit(run_dir, rid="r2", to_step=15, skip=[], signal=False)  # no such checkpoint
        assert h.at_step_boundary(25) is None
        assert status(run_dir, "r2") == "refused"
        assert "no checkpoint for step 15" in read_result(run_dir, "r2")["reason"]
        _submit(run_dir, rid="r3", skip=[], signal=False, token=b"x" * 64)  # wrong token
        assert h.at_step_boundary(26) is None
        assert status(run_dir, "r3") == "rejected"
        again = _submit(run_dir, rid="r3", skip=[])
        assert (again.already_existed, again.status) == (True, "rejected")
    finally:
        h.uninstall()


def test_a_token_from_the_caller_signs_without_reading_the_run_dir(run_dir):
    (run_dir / ".sentinel" / "token").unlink()
    sub = _submit(run_dir, signal=False, token=b"k" * 64)
    raw = json.loads(sub.path.read_text())
    assert raw["signature"] == sign(sub.request, b"k" * 64)


def test_missing_token_writes_nothing(tmp_path):
    with pytest.raises(RollbackError, match="no run token at .* is the job running"):
        _submit(tmp_path)
    assert status(tmp_path, "r1") == "absent"
    assert not (tmp_path / "rollback").exists()


def test_bad_skip_ranges_and_ids_are_refused_before_writing(run_dir):
    SkipPlan(run_dir).add([(20, 28)], added_by="earlier", reason="x")
    with pytest.raises(RollbackError, match="skip range 25:30 overlaps 20:28"):
        _submit(run_dir)
    with pytest.raises(RollbackError, match=r"request id '\.\./x': use 1-64 of"):
        _submit(run_dir, rid="../x", skip=[])
    assert status(run_dir, "r1") == "absent"


def test_pids_of_another_host_are_never_signalled(run_dir, sigusr1):
    # A PID another node recorded names some unrelated process here: SIGUSR1's default
    # action would kill it. A real process stands in for it.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record_pid(run_dir, 0, os.getpid())
        _record_pid(run_dir, 8, bystander.pid, host="some-other-node")
        ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        _record_pid(run_dir, 1, ended.pid)  # a rank that recorded itself, then ended
        ended.kill()
        ended.wait()
        sub = _submit(run_dir)
        assert (sub.signalled, sub.missing) == ([os.getpid()], [ended.pid])
        time.sleep(0.2)
        assert bystander.poll() is None  # still alive: never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_no_recorded_pid_is_not_an_error_and_keeps_the_request(run_dir):
    sub = _submit(run_dir)
    assert sub.signalled == [] and "no rank recorded its PID" in sub.unsignalled
    assert status(run_dir, "r1") == "pending"  # the job's polling still finds it


def test_wait_result_times_out_on_the_injected_clock(run_dir):
    t = [100.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        t[0] += s

    assert wait_result(run_dir, "r1", 0.25, poll_s=0.1, sleep=sleep,
                       monotonic=lambda: t[0]) is None
    assert sleeps == pytest.approx([0.1, 0.1, 0.05])
    assert wait_result(run_dir, "r1", 0.0, sleep=sleep, monotonic=lambda: t[0]) is None


def test_wait_result_returns_the_answer_when_it_comes(run_dir):
    t = [0.0]

    def sleep(s):
        t[0] += s
        if t[0] >= 0.3:
            path = result_path(run_dir, "r1")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"id": "r1", "status": "done", "to_step": 10}))

    got = wait_result(run_dir, "r1", 5.0, sleep=sleep, monotonic=lambda: t[0])
    assert got == {"id": "r1", "status": "done", "to_step": 10}
    assert t[0] == pytest.approx(0.3)


def test_a_damaged_result_is_a_clear_error(run_dir):
    path = result_path(run_dir, "r1")
    path.parent.mkdir(parents=True)
    path.write_text("{half")
    with pytest.raises(RollbackError, match="result .*r1.json cannot be read"):
        status(run_dir, "r1")
