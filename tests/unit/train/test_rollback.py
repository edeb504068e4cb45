import json
import logging
import os
import signal
import socket
import stat
import threading
import time

import pytest
import torch

from sentinel import protocol
from sentinel.train import skipplan
from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.reporter import Reporter
from sentinel.train.request import (
    RollbackError,
    RollbackRequest,
    job_pids,
    read_result,
    read_token,
    token_path,
    write_request,
)
from sentinel.train.rollback import RollbackHandler, ensure_token
from sentinel.train.skipplan import SkipPlan
from tests.support.checkpoints import record_by_hand


class Job:
    """A run directory with checkpoints 0, 10, 20, a handler and a listening 'agent'."""

    def __init__(self, tmp_path, clock=None):
        self.dir = tmp_path
        self.store = CheckpointStore(tmp_path / "checkpoints", keep=5)
        for s in (0, 10, 20):
            self.store.save(s, {"w": torch.full((8,), float(s)), "step": s})
        self.plan = SkipPlan(tmp_path)
        self.restored = []
        self.sock_path = str(tmp_path / "agent.sock")
        self.agent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.agent.bind(self.sock_path)
        self.agent.settimeout(0.2)
        self.now = clock or time.time
        self.handler = RollbackHandler(
            tmp_path, "job-a", self.store, self.plan, self.restored.append,
            Reporter("job-a", rank=0, socket_path=self.sock_path), now=self.now,
            poll_interval_s=1e9)
        self.handler.install()
        self.token = read_token(tmp_path)

    def events(self):
        out = []
        try:
            while True:
                r = protocol.decode(self.agent.recv(65536))
                out.append((r.kind, r.fields))
        except TimeoutError:
            return out

    def request(self, to_step=10, skip=((25, 30),), job="job-a", token=None, created=None):
        req = RollbackRequest(id=os.urandom(8).hex(), job=job, to_step=to_step,
                              skip=list(skip), requested_by="test", reason="spike",
                              created=time.time() if created is None else created)
        write_request(self.dir, req, token or self.token)
        return req

    def close(self):
        self.handler.uninstall()
        self.agent.close()


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path)
    yield j
    j.close()


def test_token_is_private_and_stable(tmp_path):
    tok = ensure_token(tmp_path)
    mode = stat.S_IMODE(token_path(tmp_path).stat().st_mode)
    assert mode == 0o600 and len(tok) == 64
    os.chmod(token_path(tmp_path), 0o644)
    assert ensure_token(tmp_path) == tok  # same token, permissions tightened again
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    with pytest.raises(RollbackError, match="no run token .* is the job running"):
        read_token(tmp_path / "elsewhere")


def test_a_control_group_may_read_the_token(tmp_path):
    """The job names a group it is in: token 0640 and the control directories its."""
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    run_dir = tmp_path / "run"
    tok = ensure_token(run_dir, group)
    st = token_path(run_dir).stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, os.getegid())
    assert stat.S_IMODE((run_dir / ".sentinel").stat().st_mode) == 0o2750
    h = RollbackHandler(run_dir, "job-a", CheckpointStore(run_dir / "ck"), SkipPlan(run_dir),
                        lambda s: None, control_group=group)
    h.install()
    try:
        modes = {d: stat.S_IMODE((run_dir / d).stat().st_mode)
                 for d in ("rollback/requests", "rollback/results", ".sentinel/pids")}
        assert modes == {"rollback/requests": 0o2770, "rollback/results": 0o2750,
                         ".sentinel/pids": 0o2750}
    finally:
        h.uninstall()
    # Without it again: the token goes back to the job's user alone, unchanged.
    assert ensure_token(run_dir) == tok
    assert stat.S_IMODE(token_path(run_dir).stat().st_mode) == 0o600
    with pytest.raises(RollbackError, match="control group 'no-such-group-x' "
                                            r"\(SENTINEL_CONTROL_GROUP\) does not exist"):
        ensure_token(tmp_path / "other", "no-such-group-x")


def test_signalled_request_is_applied_at_the_boundary(job):
    assert job.handler.at_step_boundary(22) is None  # first boundary polls; nothing there
    req = job.request(to_step=10, skip=[(25, 30)])
    assert job.handler.at_step_boundary(23) is None  # no signal, next poll far off: not seen
    os.kill(os.getpid(), signal.SIGUSR1)
    out = job.handler.at_step_boundary(24)
    assert out is not None and (out.from_step, out.to_step) == (24, 10)
    assert [float(s["w"][0]) for s in job.restored] == [10.0]
    assert [r.text() for r in SkipPlan(job.dir).ranges] == ["25:30"]  # persisted
    assert SkipPlan(job.dir).ranges[0].added_by == "test"
    assert [c.step for c in job.store.checkpoints()] == [0, 10]  # 20 is off the timeline
    result = read_result(job.dir, req.id)
    assert result["status"] == "done" and result["pid"] == os.getpid()
    assert result["total_s"] >= result["read_s"] >= 0
    assert not (job.dir / "rollback/requests" / f"{req.id}.json").exists()
    (kind, fields), = job.events()
    assert kind == "rollback_done"
    assert fields["to_step"] == 10 and fields["from_step"] == 24 and fields["skipped_batches"] == 5
    assert fields["total_s"] >= 0 and fields["request_id"] == req.id
    assert job.handler.at_step_boundary(25) is None  # applied once


@pytest.mark.parametrize("token", [b"f" * 64, None])
def test_unsigned_or_wrongly_signed_requests_are_ignored_and_logged(job, caplog, token):
    req = job.request(token=b"0" * 64)
    path = job.dir / "rollback/requests" / f"{req.id}.json"
    if token is None:
        raw = json.loads(path.read_text())
        del raw["signature"]
        path.write_text(json.dumps(raw))
    caplog.set_level(logging.WARNING)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert job.handler.at_step_boundary(30) is None
    assert "missing or wrong signature" in caplog.text
    assert job.restored == [] and len(job.plan) == 0
    assert path.with_suffix(".rejected").exists() and not path.exists()
    assert read_result(job.dir, req.id) is None
    assert job.events() == []


def _refused(job, req, step=30):
    os.kill(os.getpid(), signal.SIGUSR1)
    assert job.handler.at_step_boundary(step) is None
    assert job.restored == []
    result = read_result(job.dir, req.id)
    assert result["status"] == "refused"
    (kind, fields), = job.events()
    assert kind == "rollback_refused" and fields["request_id"] == req.id
    assert fields["reason"] == result["reason"]
    return result["reason"]


def test_missing_checkpoint_is_refused(job):
    reason = _refused(job, job.request(to_step=15))
    assert reason == "no checkpoint for step 15 (available: 0, 10, 20)"


def test_checkpoint_that_does_not_verify_is_refused(job):
    f = job.dir / "checkpoints" / "step_000000010.pt"
    data = bytearray(f.read_bytes())
    data[300] ^= 1
    f.write_bytes(bytes(data))
    reason = _refused(job, job.request(to_step=10))
    assert "checkpoint step 10 refused" in reason and "sha256" in reason
    assert [c.step for c in job.store.checkpoints()] == [0, 10, 20]  # nothing abandoned


def test_other_job_stale_and_overlapping_requests_are_refused(job):
    assert "for job 'job-b', this is job 'job-a'" in _refused(job, job.request(job="job-b"))
    assert "stale" in _refused(job, job.request(created=time.time() - 7200))
    job.plan.add([(20, 28)], added_by="earlier", reason="x")
    assert "bad skip ranges: skip range 25:30 overlaps 20:28" in _refused(job, job.request())


def test_a_lost_signal_is_covered_by_polling(tmp_path):
    t = [1000.0]
    j = Job(tmp_path, clock=lambda: t[0])
    try:
        j.handler.poll_interval_s = 10.0
        assert j.handler.at_step_boundary(1) is None  # polls now (nothing), next poll at 1010
        j.request(created=t[0])
        t[0] += 5
        assert j.handler.at_step_boundary(2) is None  # not yet due
        t[0] += 6
        out = j.handler.at_step_boundary(3)
        assert out is not None and out.to_step == 10
    finally:
        j.close()


def test_only_checks_every_n_steps(job):
    job.handler.check_every = 5
    job.request()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert job.handler.at_step_boundary(21) is None
    assert job.handler.at_step_boundary(25) is not None


def test_request_ids_and_fields_are_validated():
    with pytest.raises(RollbackError, match="request id '../x'"):
        RollbackRequest.from_json({"id": "../x", "job": "j", "to_step": 1, "created": 0})
    with pytest.raises(RollbackError, match="request has no 'to_step'; valid: {id, job, to_step"):
        RollbackRequest.from_json({"id": "a", "job": "j", "created": 0})


def test_a_junk_signature_does_not_block_the_valid_requests(job, caplog):
    # A non-ASCII signature made hmac.compare_digest raise TypeError, which aborted the
    # whole check: the junk file stayed and no request behind it was ever applied.
    d = job.dir / "rollback/requests"
    d.mkdir(parents=True, exist_ok=True)
    junk = RollbackRequest(id="0000-junk", job="job-a", to_step=10, created=time.time())
    (d / "0000-junk.json").write_text(json.dumps({"request": junk.to_json(),
                                                  "signature": "\u00e9" * 64}))
    req = job.request(to_step=10, skip=[(25, 30)])
    caplog.set_level(logging.WARNING)
    os.kill(os.getpid(), signal.SIGUSR1)
    out = job.handler.at_step_boundary(24)
    assert out is not None and out.request.id == req.id
    assert "missing or wrong signature" in caplog.text
    assert (d / "0000-junk.rejected").exists() and not (d / "0000-junk.json").exists()


class NotAWeight:
    """An object ``torch.load(weights_only=True)`` refuses to unpickle."""


def test_checkpoint_that_verifies_but_cannot_be_loaded_is_refused(job):
    # Before: the vote said "verified", then deserialising raised out of the boundary
    # (in a distributed job, on some ranks only, after all had agreed), the request stayed
    # pending and a restarted job hit it again.
    record_by_hand(job.store.dir, 30, {"w": NotAWeight()})  # save() refuses it now
    req = job.request(to_step=30, skip=[(40, 45)])
    reason = _refused(job, req)
    assert "checkpoint verifies but cannot be loaded" in reason
    assert len(job.plan) == 0 and [c.step for c in job.store.checkpoints()] == [0, 10, 20, 30]
    assert not (job.dir / "rollback/requests" / f"{req.id}.json").exists()


class Crash(BaseException):
    """Stands for the process being killed at that point."""


@pytest.mark.parametrize("where", ["abandon", "skip_plan_save"])
def test_a_crash_while_applying_leaves_a_state_a_restart_completes(tmp_path, monkeypatch, where):
    j = Job(tmp_path)
    req = j.request(to_step=10, skip=[(25, 30)])
    with monkeypatch.context() as m:
        if where == "abandon":
            m.setattr(CheckpointStore, "abandon_after", lambda *a: (_ for _ in ()).throw(Crash()))
        else:
            m.setattr(skipplan, "write_json_atomic", lambda *a: (_ for _ in ()).throw(Crash()))
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(Crash):
            j.handler.at_step_boundary(24)
    j.close()
    # The restarted job resumes from the newest live checkpoint: never the one past the
    # spike while the plan already skips its batches.
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    plan = SkipPlan(tmp_path)
    resumed = store.latest_verified().step
    assert (resumed, len(plan)) in {(20, 0), (10, 0)}
    restored = []
    h = RollbackHandler(tmp_path, "job-a", store, plan, restored.append, now=time.time)
    h.install()
    try:
        out = h.at_step_boundary(resumed)  # the first boundary polls: the request is pending
    finally:
        h.uninstall()
    assert out is not None and out.request.id == req.id
    assert read_result(tmp_path, req.id)["status"] == "done"
    assert [r.text() for r in SkipPlan(tmp_path).ranges] == ["25:30"]
    assert store.latest_verified().step == 10


def test_only_ranks_of_this_host_are_signalled(job):
    # The run directory is shared by all nodes: a PID another node recorded is some other
    # process here, and SIGUSR1 (default action: terminate) would kill it.
    pids = job.dir / ".sentinel" / "pids"
    assert json.loads((pids / "rank-0.pid").read_text())["pid"] == os.getpid()
    (pids / "rank-8.pid").write_text(json.dumps({"pid": 4242, "host": "some-other-node"}))
    (pids / "rank-9.pid").write_text("not a pid")
    assert job_pids(job.dir) == [os.getpid()]


def test_a_failed_restore_stops_the_job_and_keeps_the_request_for_the_restart(tmp_path):
    j = Job(tmp_path)
    try:
        def broken_restore(state):
            raise RuntimeError("size mismatch for w")

        j.handler.restore = broken_restore
        req = j.request(to_step=10, skip=[(25, 30)])
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(RollbackError, match="restoring the checkpoint failed: RuntimeError"):
            j.handler.at_step_boundary(24)
        # Nothing was half-done on disk: the request is still pending, no result, no skip
        # ranges, and no checkpoint was abandoned, so a restart applies it again.
        assert (j.dir / "rollback/requests" / f"{req.id}.json").exists()
        assert read_result(j.dir, req.id) is None
        assert len(SkipPlan(j.dir)) == 0
        assert [c.step for c in j.store.checkpoints()] == [0, 10, 20]
        (kind, fields), = j.events()
        assert kind == "rollback_failed" and fields["request_id"] == req.id
    finally:
        j.close()


def test_a_target_held_in_memory_is_restored_without_reading_the_disk(tmp_path, monkeypatch):
    from sentinel.train.asyncsave import AsyncCheckpointer

    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 20)
    for s in (0, 10):
        ck.save(s, {"w": torch.full((8,), float(s)), "step": s})
    ck.wait()
    restored = []
    handler = RollbackHandler(tmp_path, "job-a", store, SkipPlan(tmp_path), restored.append,
                              poll_interval_s=1e9, memory=ck)
    handler.install()
    try:
        # The next checkpoint is still being written when the request comes.
        gate = threading.Event()
        real_save = store.save

        def slow_save(step, st, *, abort=None):
            gate.set()
            abort.wait(10)
            return real_save(step, st, abort=abort)

        monkeypatch.setattr(store, "save", slow_save)
        ck.save(20, {"w": torch.full((8,), 20.0), "step": 20})
        assert gate.wait(10)

        def no_disk(step):
            raise AssertionError(f"read checkpoint {step} from disk")

        monkeypatch.setattr(store, "read_verified", no_disk)
        req = RollbackRequest(id="r-mem", job="job-a", to_step=10, skip=[(12, 14)],
                              requested_by="test", reason="spike", created=time.time())
        write_request(tmp_path, req, read_token(tmp_path))
        os.kill(os.getpid(), signal.SIGUSR1)
        out = handler.at_step_boundary(24)
        assert out is not None and out.source == "memory" and out.to_step == 10
        assert [float(s["w"][0]) for s in restored] == [10.0]
        assert read_result(tmp_path, "r-mem")["source"] == "memory"
        # The old timeline's step 20 never reached the manifest, and the disk was kept.
        assert [c.step for c in store.checkpoints(include_abandoned=True)] == [0, 10]
        assert ck.pending() == [] and ck.held_steps() == [0, 10]
        monkeypatch.undo()
        # Not held any more (released): the same handler falls back to the disk.
        ck.close()
        req2 = RollbackRequest(id="r-disk", job="job-a", to_step=0, skip=[(14, 16)],
                               requested_by="test", reason="spike", created=time.time())
        write_request(tmp_path, req2, read_token(tmp_path))
        os.kill(os.getpid(), signal.SIGUSR1)
        out = handler.at_step_boundary(16)
        assert out is not None and out.source == "disk" and out.to_step == 0
    finally:
        handler.uninstall()
        ck.close()


def test_a_sharded_target_is_read_from_this_ranks_shard(tmp_path):
    from sentinel.train.sharded import save_sharded

    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    for s in (0, 10):
        save_sharded(store, s, {"w": torch.full((8,), float(s)), "step": s})
    assert [sh.file for sh in store.info(10).shards] == ["step_000000010.rank00000.pt"]
    restored = []
    handler = RollbackHandler(tmp_path, "job-a", store, SkipPlan(tmp_path), restored.append,
                              poll_interval_s=1e9)
    handler.install()
    try:
        req = RollbackRequest(id="r-shard", job="job-a", to_step=0, skip=[(3, 5)],
                              requested_by="test", reason="spike", created=time.time())
        write_request(tmp_path, req, read_token(tmp_path))
        os.kill(os.getpid(), signal.SIGUSR1)
        out = handler.at_step_boundary(12)
        assert out is not None and out.to_step == 0 and out.source == "disk"
        assert [float(s["w"][0]) for s in restored] == [0.0]
        # Step 10 is abandoned and, unpinned, deleted with its shard.
        assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
            "step_000000000.rank00000.pt"]
    finally:
        handler.uninstall()
