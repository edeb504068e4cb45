"""Two gloo ranks in subprocesses: per-rank RNG states and sharded checkpoints."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

RANK = r"""
import json, os, random, sys, torch, torch.distributed as dist
from sentinel.train.checkpoint import (CheckpointError, CheckpointStore,
                                       restore_training_state, training_state)
from sentinel.train.data import DataPosition
from sentinel.train.sharded import load_sharded, resume_sharded, save_sharded

rank, ckdir = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
out = {"rank": rank}
# -- each rank restores its own RNG states
torch.manual_seed(100 + rank)  # ranks draw differently (dropout, sampling)
random.seed(200 + rank)
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
st = training_state(model, opt, None, DataPosition(), {"step": 5})  # on every rank
store = CheckpointStore(ckdir, keep=2, writer=rank == 0)
if rank == 0:
    store.save(5, st)
dist.barrier()
out["after"] = [torch.rand(3).tolist(), random.random()]
torch.rand(50)  # training goes on
saved = CheckpointStore(ckdir, writer=False).load(5)
out["rng_ranks"] = len(saved["rng_ranks"])
restore_training_state(saved, model, opt, None)
out["again"] = [torch.rand(3).tolist(), random.random()]
# -- sharded: each rank writes its own part
for step in (10, 20, 30):
    info = save_sharded(store, step, {"part": torch.full((1000,), float(step + rank))})
out["shards"] = [s.file for s in info.shards]
out["mine"] = float(load_sharded(store, 30)["part"][0])
# -- one rank's shard cannot be saved: neither rank records anything
bad = {"part": torch.zeros(2)}
if rank == 1:
    bad["lr"] = __import__("numpy").float64(0.1)
try:
    save_sharded(store, 40, bad)
    out["bad"] = "saved"
except CheckpointError as e:
    out["bad"] = str(e)
dist.barrier()
out["files"] = sorted(os.listdir(ckdir))
# -- a restart: rank 0 picks the step, each rank reads its own shard of it
if rank == 0:  # rank 1's shard of step 30 is damaged: both resume from 20
    f = os.path.join(ckdir, "step_000000030.rank00001.pt")
    data = bytearray(open(f, "rb").read())
    data[200] ^= 1
    open(f, "wb").write(bytes(data))
dist.barrier()
info, mine = resume_sharded(CheckpointStore(ckdir, writer=False))
out["resumed"] = [info.step, float(mine["part"][0])]
print(json.dumps(out))
dist.destroy_process_group()
"""


def test_each_rank_restores_its_own_rng_and_shards_are_saved_by_all(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for o in outs:
        assert o["again"] == o["after"], o  # this rank's own stream, resumed exactly
    assert outs[0]["after"] != outs[1]["after"]
    assert [o["rng_ranks"] for o in outs] == [2, 2]
    # Sharded: one entry per step, each rank reads back its own shard.
    assert outs[0]["shards"] == ["step_000000030.rank00000.pt", "step_000000030.rank00001.pt"]
    assert [o["mine"] for o in outs] == [30.0, 31.0]
    for o in outs:
        assert "not saved: rank 1: checkpoint step 40 not saved" in o["bad"], o["bad"]
    assert outs[0]["files"] == ["manifest.json", "manifest.lock", "step_000000020.rank00000.pt",
                                "step_000000020.rank00001.pt", "step_000000030.rank00000.pt",
                                "step_000000030.rank00001.pt", "writer.lock"]
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore

    store = CheckpointStore(tmp_path, writer=False)
    assert [c.step for c in store.checkpoints()] == [20, 30]
    try:
        store.read_verified_shard(30, 0, 4)
        raise AssertionError("read a 2-rank checkpoint on 4 ranks")
    except CheckpointError as e:
        assert "is 2 shards; this job has 4 ranks" in str(e)
    # Rank 1's shard of 30 was damaged before the restart: both ranks resumed from 20.
    assert [o["resumed"] for o in outs] == [[20, 20.0], [20, 21.0]]
    assert not store.verify(30) and store.latest_verified().step == 20
