"""Asynchronous sharded checkpoints on two gloo ranks in subprocesses.

Each rank snapshots its own part; the writer threads write the shards and agree over
their own gloo group. What must hold on every rank: the same checkpoints, one failed
shard fails the checkpoint everywhere, a rollback's cancel reaches no manifest, a kill
-9 mid-write leaves the previous checkpoint whole, and an FSDP2 job rolls back from RAM
and from disk to bit-identical states (tests/support/sharded_job.py, also the GPU test).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sentinel.train.asyncsave import AsyncCheckpointer
from sentinel.train.checkpoint import CheckpointStore
from tests.support.services import free_port
from tests.support.sharded_job import check, run_ranks

ROOT = Path(__file__).resolve().parents[3]

PRELUDE = r"""
import json, os, sys, time, torch, torch.distributed as dist
from sentinel.train import checkpoint
from sentinel.train.asyncsave import AsyncCheckpointer
from sentinel.train.checkpoint import CheckpointError, CheckpointStore
from sentinel.train.sharded import load_sharded

rank, ckdir = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
store = CheckpointStore(ckdir, keep=5, writer=rank == 0)
ck = AsyncCheckpointer(store, sharded=True, ram_budget_bytes=1 << 30)

def part(step, n=1000):
    return {"w": torch.full((n,), float(step * 10 + rank)), "step": step}

def slow_writes():
    # Pieces of 64 KiB, 20 ms each: a 4 MiB shard takes over a second to write.
    real = checkpoint._HashingWriter.write
    def slow(self, b):
        mv = memoryview(b).cast("B")
        for at in range(0, len(mv), 1 << 16):
            time.sleep(0.02)
            real(self, mv[at:at + (1 << 16)])
        return len(mv)
    checkpoint._HashingWriter.write = slow
"""

RANK = PRELUDE + r"""
out = {}
live = part(10)
ck.save(10, live)
live["w"].fill_(-1.0)  # the loop goes on at once
ck.save(20, part(20))
ck.wait()
out["steps"] = [c.step for c in store.checkpoints()]
out["disk"] = [float(load_sharded(store, s)["w"][0]) for s in (10, 20)]
out["ram"] = [ck.held_steps(), float(ck.get(20, store.info(20))["w"][0])]
# A rollback to 20 while 30 is being written and 40 waits: both called off on every rank.
slow_writes()
ck.save(30, part(30, 1 << 20))
ck.save(40, part(40, 1 << 20))
time.sleep(0.2)
out["cancelled"] = ck.cancel_after(20)
out["after_cancel"] = [[c.step for c in store.checkpoints()], sorted(os.listdir(ckdir)),
                       ck.held_steps(), ck.pending()]
# One rank's shard cannot be written: the checkpoint fails on both, naming that rank.
bad = part(50)
if rank == 1:
    bad["lr"] = __import__("numpy").float64(0.1)
ck.save(50, bad)
try:
    ck.wait()
    out["bad"] = "saved"
except CheckpointError as e:
    out["bad"] = str(e)
ck.save(60, part(60))  # and the next one saves as usual
ck.close()
out["end"] = [[c.step for c in store.checkpoints()], sorted(os.listdir(ckdir))]
print(json.dumps(out))
dist.destroy_process_group()
"""


def _start(script: str, tmp_path: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", script, str(r), str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True) for r in (0, 1)]


def test_async_sharded_saves_agree_on_every_rank(tmp_path):
    procs = _start(RANK, tmp_path)
    try:
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    for r, o in enumerate(outs):
        assert o["steps"] == [10, 20]
        assert o["disk"] == [100.0 + r, 200.0 + r]  # its own shard, as at save()
        assert o["ram"] == [[10, 20], 200.0 + r]  # held in RAM once written on all ranks
        assert o["cancelled"] == [30, 40]
        steps, files, held, pending = o["after_cancel"]
        assert steps == [10, 20] and held == [10, 20] and pending == []
        assert not [f for f in files if "000000030" in f or "000000040" in f], files
        assert o["bad"].startswith("sharded checkpoint step 50 not saved: rank 1: "), o["bad"]
        assert "numpy" in o["bad"]
        assert o["end"][0] == [10, 20, 60]
    assert outs[0]["end"][1] == [
        "manifest.json", "manifest.lock", *(f"step_0000000{s}.rank0000{r}.pt"
                                            for s in (10, 20, 60) for r in (0, 1)),
        "writer.lock"]


KILLED = PRELUDE + r"""
ck.save(10, part(10, 1 << 20))
ck.wait()
if rank == 1:
    slow_writes()
ck.save(20, part(20, 1 << 20))
print("queued", flush=True)
while True:  # the training loop goes on while the writers run
    time.sleep(0.01)
"""


def test_kill_9_of_one_rank_mid_write_leaves_the_previous_checkpoint(tmp_path):
    procs = _start(KILLED, tmp_path)
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["queued", "queued"]
        tmp = tmp_path / f".step_000000020.rank00001.pt.tmp-{procs[1].pid}"
        deadline = time.monotonic() + 30
        while not (tmp.exists() and tmp.stat().st_size > 1 << 20):
            assert time.monotonic() < deadline, os.listdir(tmp_path)
            time.sleep(0.01)
        os.kill(procs[1].pid, signal.SIGKILL)
        # Rank 0's shard is written and waits for rank 1's result; the launcher (torchrun)
        # ends the other ranks when one dies.
        shard0 = tmp_path / "step_000000020.rank00000.pt"
        while not shard0.exists():
            assert time.monotonic() < deadline, os.listdir(tmp_path)
            time.sleep(0.01)
        os.kill(procs[0].pid, signal.SIGKILL)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    store = CheckpointStore(tmp_path)  # the restarted job's writer removes the debris
    assert [c.step for c in store.checkpoints()] == [10] and store.verify(10)
    for r in (0, 1):
        got = store.deserialize(store.read_verified_shard(10, r, 2))
        assert torch.equal(got["w"], torch.full((1 << 20,), 100.0 + r))
    assert sorted(os.listdir(tmp_path)) == [
        "manifest.json", "manifest.lock", "step_000000010.rank00000.pt",
        "step_000000010.rank00001.pt", "writer.lock"]


def test_fsdp2_job_rolls_back_from_ram_and_disk_to_bit_identical_states(tmp_path):
    # The GPU test's job (tests/gpu/test_sharded_multi_gpu.py), on two CPU ranks.
    outs = run_ranks(tmp_path, "cpu", free_port(), "--every", "2", "--layers", "2",
                     "--width", "32", timeout=120)
    check(outs, 2)


def test_sharded_saves_do_not_coalesce(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="sharded saves need when_behind='wait'"):
        AsyncCheckpointer(store, sharded=True, when_behind="coalesce")
    with pytest.raises(ValueError, match="rank 0: sharded saves need the store opened "
                                         "with writer=True"):
        AsyncCheckpointer(CheckpointStore(tmp_path, writer=False), sharded=True)
    ck = AsyncCheckpointer(store, sharded=True)  # one process: one shard, rank 0's
    assert ck.when_behind == "wait"
    ck.save(5, {"w": torch.ones(3)})
    ck.wait()
    assert [s.file for s in store.info(5).shards] == ["step_000000005.rank00000.pt"]
    assert torch.equal(ck.get(5, store.info(5))["w"], torch.ones(3))
    ck.close()
