import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]

RANK = r"""
import json, random, sys, torch, torch.distributed as dist
from sentinel.train.checkpoint import CheckpointStore, restore_training_state, training_state
from sentinel.train.data import DataPosition

rank, ckdir = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(100 + rank)  # ranks draw differently (dropout, sampling)
random.seed(200 + rank)
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
st = training_state(model, opt, None, DataPosition(), {"step": 5})  # on every rank
if rank == 0:
    CheckpointStore(ckdir).save(5, st)
dist.barrier()
after = [torch.rand(3).tolist(), random.random()]
torch.rand(50)  # training goes on
state = CheckpointStore(ckdir, writer=False).load(5)
restore_training_state(state, model, opt, None)
again = [torch.rand(3).tolist(), random.random()]
print(json.dumps({"rank": rank, "after": after, "again": again}))
dist.destroy_process_group()
"""


def test_each_rank_restores_its_own_rng_state(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True) for r in (0, 1)]
    import json

    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for o in outs:
        assert o["again"] == o["after"], o  # this rank's own stream, resumed exactly
    assert outs[0]["after"] != outs[1]["after"]
    saved = torch.load(tmp_path / "step_000000005.pt", weights_only=True)["state"]
    assert len(saved["rng_ranks"]) == 2
