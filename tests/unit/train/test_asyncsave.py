import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from sentinel.train import checkpoint
from sentinel.train.asyncsave import AsyncCheckpointer
from sentinel.train.checkpoint import CheckpointError, CheckpointStore

ROOT = Path(__file__).resolve().parents[3]


def state(value: float, n: int = 1024) -> dict:
    return {"w": torch.full((n,), value), "opt": {"m": torch.full((4, 4), value)},
            "step": int(value), "rng": (1, [2, 3])}


def test_save_returns_a_snapshot_the_loop_may_change_at_once(tmp_path):
    store = CheckpointStore(tmp_path)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
    live = state(1.0)
    stats = ck.save(50, live)
    live["w"].fill_(99.0)  # the loop goes on training before the write is done
    live["opt"]["m"].zero_()
    ck.wait()
    got = store.load(50)
    assert torch.equal(got["w"], torch.full((1024,), 1.0))
    assert torch.equal(got["opt"]["m"], torch.full((4, 4), 1.0))
    assert got["step"] == 1 and got["rng"] == (1, [2, 3])
    assert store.verify(50) and stats.nbytes == 1024 * 4 + 16 * 4 and stats.allocated
    ck.close()


def test_buffers_are_reused_and_the_budget_bounds_what_is_held(tmp_path):
    one = 1024 * 4 + 16 * 4
    store = CheckpointStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, ram_budget_bytes=2 * one)
    for s in range(5):
        stats = ck.save(s * 10, state(float(s)))
        ck.wait()
        assert ck.held_bytes() <= 2 * one
    assert not stats.allocated  # the two sets are reused from save to save
    assert ck.held_steps() == [30, 40]
    entry = store.info(40)
    held = ck.get(40, entry)
    assert torch.equal(held["w"], torch.full((1024,), 4.0))
    held["w"].fill_(-1)  # a copy: the held snapshot is untouched
    assert torch.equal(ck.get(40, entry)["w"], torch.full((1024,), 4.0))
    assert ck.get(10, store.info(10)) is None  # verified on disk, no longer in RAM
    ck.close()


def test_a_budget_below_one_snapshot_still_saves_and_keeps_the_newest(tmp_path):
    store = CheckpointStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, ram_budget_bytes=0)
    for s in range(3):
        ck.save(s, state(float(s)))
    ck.wait()
    assert [c.step for c in store.checkpoints()] == [0, 1, 2]
    assert ck.held_steps() == [2]
    assert ck.get(2, store.info(2)) is not None
    ck.close()


def test_a_held_state_that_is_not_the_manifests_is_never_returned(tmp_path):
    store = CheckpointStore(tmp_path)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
    ck.save(10, state(1.0))
    ck.wait()
    entry = store.info(10)
    other = checkpoint.CheckpointInfo(10, entry.file, entry.size, "0" * 64, entry.time)
    assert ck.get(10, other) is None  # step saved again by someone else
    abandoned = checkpoint.CheckpointInfo(10, entry.file, entry.size, entry.sha256,
                                          entry.time, abandoned="rollback")
    assert ck.get(10, abandoned) is None
    assert ck.get(10, None) is None
    assert ck.get(10, entry) is not None
    ck.close()


def test_a_failed_background_write_is_raised_at_the_next_save(tmp_path):
    import numpy as np

    store = CheckpointStore(tmp_path)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
    ck.save(10, state(1.0))
    ck.wait()
    bad = state(2.0)
    bad["lr"] = np.float64(0.1)  # torch.load(weights_only=True) refuses it
    ck.save(20, bad)
    with pytest.raises(CheckpointError, match=r"step 20 not saved.*state\['lr'\]"):
        ck.wait()
    assert [c.step for c in store.checkpoints()] == [10]
    assert store.verify(10)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    ck.close()


class GatedStore(CheckpointStore):
    """A store whose saves wait at a gate, so a test can act while one is under way."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.started = threading.Event()

    def save(self, step, st, *, abort=None):
        if step >= 100:
            self.started.set()
            abort.wait(10)  # the cancel arrives here, mid-save
        return super().save(step, st, abort=abort)


def test_a_rollback_cancels_the_write_of_the_abandoned_timeline(tmp_path):
    store = GatedStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
    ck.save(50, state(5.0))
    ck.wait()
    ck.save(100, state(10.0))
    assert store.started.wait(10)
    t0 = time.monotonic()
    assert ck.cancel_after(50) == [100]
    assert time.monotonic() - t0 < 5
    ck.wait()
    assert [c.step for c in store.checkpoints(include_abandoned=True)] == [50]
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "manifest.lock",
                                            "step_000000050.pt", "writer.lock"]
    assert ck.held_steps() == [50]
    ck.close()


def test_a_reader_rank_holds_its_snapshot_and_writes_nothing(tmp_path):
    CheckpointStore(tmp_path).save(10, state(1.0))
    reader = CheckpointStore(tmp_path, writer=False)
    ck = AsyncCheckpointer(reader, ram_budget_bytes=1 << 30)
    ck.save(10, state(7.0))
    assert ck.pending() == [] and ck.held_steps() == [10]
    assert torch.equal(ck.get(10, reader.info(10))["w"], torch.full((1024,), 7.0))
    ck.close()


CHILD = r"""
import sys, time, torch
from sentinel.train import checkpoint
from sentinel.train.asyncsave import AsyncCheckpointer

checkpoint.WRITE_PIECE_BYTES = 1 << 16
real = checkpoint._HashingWriter.write
def slow(self, b):
    if len(memoryview(b)) >= 1 << 16:
        time.sleep(0.02)
    return real(self, b)
checkpoint._HashingWriter.write = slow
store = checkpoint.CheckpointStore(sys.argv[1])
ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
w = torch.zeros(1 << 21)  # 8 MiB: about 2.5 s at the slowed write speed
ck.save(0, {"w": w, "step": 0})
ck.wait()
ck.save(50, {"w": w + 50, "step": 50})
print("queued", flush=True)
while True:  # the training loop goes on while the write runs
    w.add_(1.0)
"""


def test_kill_9_during_the_background_write_leaves_the_previous_state(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "queued"
        tmp = tmp_path / f".step_000000050.pt.tmp-{p.pid}"
        deadline = time.monotonic() + 30
        while not (tmp.exists() and tmp.stat().st_size > 1 << 20):
            assert time.monotonic() < deadline, os.listdir(tmp_path)
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(10)
    store = CheckpointStore(tmp_path)  # the next writer: cleans the dead one's file
    assert [c.step for c in store.checkpoints()] == [0]
    got = store.load_latest()
    assert got[0].step == 0 and torch.equal(got[1]["w"], torch.zeros(1 << 21))
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_a_tied_weight_is_copied_once_and_stays_tied_on_restore(tmp_path):
    store = CheckpointStore(tmp_path)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30)
    emb = torch.nn.Embedding(16, 4)
    head = torch.nn.Linear(4, 16, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    stats = ck.save(1, {"model": model.state_dict()})
    assert stats.nbytes == 16 * 4 * 4
    ck.wait()
    held = ck.get(1, store.info(1))["model"]
    assert held["emb.weight"] is held["head.weight"]
    with torch.no_grad():
        emb.weight.zero_()
    model.load_state_dict(store.load(1)["model"])
    assert torch.equal(model["head"].weight, held["emb.weight"])
    ck.close()


class SlowStore(CheckpointStore):
    """A store whose writes of steps >= 10 wait until the test opens the gate."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.writing: list[int] = []

    def save(self, step, st, *, abort=None):
        self.writing.append(step)
        if step >= 10:
            self.gate.wait(10)
        return super().save(step, st, abort=abort)


def _behind(tmp_path, when_behind):
    """Save steps 0, 10, 20, 30, 40 while the disk is stuck on step 10's write."""
    one = 1024 * 4 + 16 * 4
    store = SlowStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, ram_budget_bytes=3 * one, when_behind=when_behind)
    ck.save(0, state(0.0))
    ck.wait()  # step 0 verified: the rollback target held in RAM
    ck.save(10, state(1.0))  # the writer takes it and gets stuck
    deadline = time.monotonic() + 10
    while store.writing[-1:] != [10] and time.monotonic() < deadline:
        time.sleep(0.01)
    return store, ck


def test_saves_faster_than_the_disk_supersede_the_queued_one_and_never_wait(tmp_path, caplog):
    store, ck = _behind(tmp_path, "coalesce")
    stats = [ck.save(s, state(s / 10)) for s in (20, 30, 40)]
    # 20 is queued; 30 and 40 each take the queued one's place: the loop never waits.
    assert [st.superseded for st in stats] == [None, 20, 30]
    assert all(st.waited_s < 1.0 for st in stats)
    assert ck.superseded == [20, 30] and ck.superseded_total == 2
    assert "checkpoint step 20 superseded by step 30" in caplog.text
    assert ck.pending() == [10, 40]
    store.gate.set()
    ck.wait()
    assert [c.step for c in store.checkpoints()] == [0, 10, 40]
    assert torch.equal(store.load(40)["w"], torch.full((1024,), 4.0))  # the newest state
    assert store.writing == [0, 10, 40]
    ck.close()


def test_wait_when_behind_writes_every_step_and_blocks_the_loop(tmp_path):
    store, ck = _behind(tmp_path, "wait")
    ck.save(20, state(2.0))  # queued behind 10: RAM for it, no wait
    threading.Timer(0.5, store.gate.set).start()
    stats = ck.save(30, state(3.0))  # no RAM left: waits for 10's write
    assert stats.superseded is None and stats.waited_s >= 0.4
    ck.wait()
    assert [c.step for c in store.checkpoints()] == [0, 10, 20, 30]
    ck.close()


def test_when_behind_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="when_behind must be one of coalesce, wait, got 'skip'"):
        AsyncCheckpointer(CheckpointStore(tmp_path), when_behind="skip")


def test_stage_and_gpu_budget_must_be_valid(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="stage must be one of auto, gpu, host, got 'disk'"):
        AsyncCheckpointer(store, stage="disk")
    with pytest.raises(ValueError, match="gpu_budget_bytes must be >= 0, got -1"):
        AsyncCheckpointer(store, gpu_budget_bytes=-1)
    # Staging is opt-in: on the H200 it measured no better for gpt100m (DESIGN.md).
    assert AsyncCheckpointer(store).stage == "host"


def test_auto_staging_leaves_the_device_its_margin():
    from sentinel.train.asyncsave import STAGE_MARGIN_BYTES, stage_fits, stage_margin

    gib = 1 << 30
    assert stage_margin(16 * gib) == STAGE_MARGIN_BYTES == 2 * gib  # small GPU: 2 GiB
    assert stage_margin(140 * gib) == 7 * gib  # an H200: 5% of its memory
    assert stage_fits(gib, 100 * gib, 140 * gib)  # gpt100m's 1.2 GB beside a light loop
    assert stage_fits(93 * gib, 100 * gib, 140 * gib)
    assert not stage_fits(93 * gib + 1, 100 * gib, 140 * gib)
    assert not stage_fits(gib, 2 * gib, 16 * gib)


def test_a_cpu_state_is_never_staged_whatever_stage_says(tmp_path):
    store = CheckpointStore(tmp_path)
    for stage in ("auto", "gpu", "host"):
        ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30, stage=stage)
        live = state(2.0)
        st = ck.save(7, live)
        live["w"].zero_()
        ck.wait()
        assert not st.staged and ck.staging_bytes() == 0 and not ck.fence_pending
        assert torch.equal(store.load(7)["w"], torch.full((1024,), 2.0))
        ck.close()
