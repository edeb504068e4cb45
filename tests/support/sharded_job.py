"""An FSDP2 job on two ranks with asynchronous sharded checkpoints and two rollbacks.

One rank of ``python -m tests.support.sharded_job --run-dir D --device cpu|cuda``
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment; gloo on CPU, NCCL on
CUDA). The model's parameters are sharded between the ranks (``fully_shard``); every
``--every`` steps each rank snapshots its local shards (``AsyncCheckpointer(sharded=True)``)
and the writers save them in the background. Each rank draws its batches and dropout
from its own RNG. At step 3.5E rank 0 asks the RollbackHandler to go back to 3E
(held in RAM), at 5.5E to 2E (no longer held: read from disk); after each rollback the
live state must be bit-identical to the one saved. Writes ``OUT/rank{r}.json``: what
each save blocked, each rollback's source and timings, every step's loss.
:func:`run_ranks` starts both ranks and :func:`check` asserts what the tests need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JOB = "sharded"


def _cpu_clone(tree: Any) -> Any:
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _cpu_clone(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_cpu_clone(v) for v in tree]
    return tree


def _diff(a: Any, b: Any, where: str = "state") -> list[str]:
    """Return where two states differ (tensors bit for bit, dtype included)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in _diff(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def _nbytes(tree: Any, seen: set[int] | None = None) -> int:
    import torch

    seen = set() if seen is None else seen
    if isinstance(tree, torch.Tensor):
        key = tree.untyped_storage().data_ptr() + tree.storage_offset()
        if key in seen:
            return 0
        seen.add(key)
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        return sum(_nbytes(v, seen) for v in tree)
    return 0


def _refusals(model: Any, saved: dict[str, Any]) -> list[str]:
    """Return why from_local_shards refuses another sharding and an optimizer with no state."""
    import torch

    from sentinel.train.checkpoint import CheckpointError
    from sentinel.train.sharded import from_local_shards

    sd = model.state_dict()
    fresh = torch.optim.AdamW(model.parameters())
    bad: list[tuple[Any, Any]] = [
        ({"model": {k: torch.zeros(0) for k in sd}}, {"model": sd}),
        ({k: saved[k] for k in ("model", "optimizer")},
         {"model": sd, "optimizer": fresh.state_dict()})]
    out = []
    for state, like in bad:
        try:
            from_local_shards(state, like)
            out.append("accepted")
        except CheckpointError as e:
            out.append(str(e))
    return out


def main() -> int:  # noqa: PLR0915 - one training loop, read top to bottom
    """Run one rank; see the module docstring."""
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--min-step-seconds", type=float, default=0.0)
    a = p.parse_args()

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from sentinel.train.asyncsave import AsyncCheckpointer
    from sentinel.train.checkpoint import CheckpointStore, restore_training_state, training_state
    from sentinel.train.data import DataPosition
    from sentinel.train.request import submit
    from sentinel.train.rollback import RollbackHandler
    from sentinel.train.sharded import from_local_shards, local_shards
    from sentinel.train.skipplan import SkipPlan

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if a.device == "cuda":
        # Bit-identical replays: cuBLAS picks the same kernels run to run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if a.device == "cuda" else "gloo", rank=rank,
                            world_size=world, device_id=dev if a.device == "cuda" else None)
    torch.manual_seed(0)  # the same initial model on every rank, then sharded
    layers: list[torch.nn.Module] = []
    for _ in range(a.layers):
        layers += [torch.nn.Linear(a.width, a.width), torch.nn.GELU(), torch.nn.Dropout(0.1)]
    model = torch.nn.Sequential(*layers).to(dev)
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1000 + rank)  # from here each rank draws its own batches and dropout
    a.run_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(a.run_dir / "checkpoints", keep=10, writer=rank == 0)
    ck: AsyncCheckpointer | None = None

    def restore(state: dict[str, Any]) -> None:
        like = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        state = {**state, **from_local_shards({k: state[k] for k in like}, like)}
        restore_training_state(state, model, opt, None, group=handler.group)

    handler = RollbackHandler(a.run_dir, JOB, store, SkipPlan(a.run_dir), restore,
                              map_location=dev)
    handler.install()  # on NCCL: its own gloo group, which training_state gathers on

    def snapshot(step: int) -> dict[str, Any]:
        pos = DataPosition(step, step * a.batch * world)
        return local_shards(training_state(model, opt, None, pos, {"step": step},
                                           group=handler.group))

    e = a.every
    rollbacks = {7 * e // 2: 3 * e, 11 * e // 2: 2 * e}  # at boundary -> to step
    targets = set(rollbacks.values())
    out: dict[str, Any] = {"rank": rank, "device": str(dev), "saves": [], "writes": [],
                           "rollbacks": [], "losses": [],
                           "params": sum(p.numel() for p in model.parameters())}
    refs: dict[int, Any] = {}
    step, last, restored = 0, 7 * e, -1
    while step < last:
        t_step = time.monotonic()
        if step in rollbacks and not any(r["at"] == step for r in out["rollbacks"]):
            assert ck is not None
            ck.wait()  # the target verified on every rank before it is asked for
            if rank == 0:
                submit(a.run_dir, JOB, rollbacks[step], [], request_id=uuid.uuid4().hex,
                       requested_by="sharded job", reason="test", pids=[os.getpid()])
            done = handler.at_step_boundary(step)
            assert done is not None, f"rank {rank}: no rollback at step {step}"
            now = _cpu_clone(snapshot(done.to_step))
            out["rollbacks"].append({
                "at": step, "to": done.to_step, "source": done.source, "read_s": done.read_s,
                "restore_s": done.restore_s, "total_s": done.total_s,
                "diff": _diff(refs[done.to_step], now)})
            step = restored = done.to_step
        if step % e == 0 and step > 0 and step != restored:  # the target is saved already
            st = snapshot(step)
            if ck is None:  # RAM for 3.5 snapshots: the oldest held ones are given up
                ck = AsyncCheckpointer(store, sharded=True, overlap=a.device == "cuda",
                                       ram_budget_bytes=int(3.5 * _nbytes(st)))
                handler.memory = ck
            if step in targets and step not in refs:
                refs[step] = _cpu_clone(st)
            stats = ck.save(step, st)
            del st
            out["saves"].append({"step": step, "blocked_s": stats.blocked_s,
                                 "waited_s": stats.waited_s, "nbytes": stats.nbytes})
            out["writes"] += [{"step": i.step, "write_s": s} for i, s in ck.drain_saved()]
        x = torch.randn(a.batch, a.width, device=dev)
        loss = (model(x) - x).square().mean()
        loss.backward()
        if ck is not None:
            ck.fence()  # the snapshot's copy is done before the weights change
        opt.step()
        opt.zero_grad(set_to_none=True)
        out["losses"].append([step, loss.item()])
        step += 1
        time.sleep(max(0.0, a.min_step_seconds - (time.monotonic() - t_step)))
    assert ck is not None
    ck.close()
    out["refused"] = _refusals(model, snapshot(step))
    out["writes"] += [{"step": i.step, "write_s": s} for i, s in ck.drain_saved()]
    out["held"] = ck.held_steps()
    out["checkpoints"] = [c.step for c in store.checkpoints()]
    handler.uninstall()
    out_dir = a.run_dir / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()
    return 0


def run_ranks(run_dir: Path, device: str, port: int, *flags: str, timeout: float = 170
              ) -> list[dict[str, Any]]:
    """Run both ranks to the end and return their outputs; fail with their logs if not."""
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.sharded_job", "--run-dir", str(run_dir),
             "--device", device, *flags], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [log[-4000:] for log in logs]
    return [json.loads((run_dir / "out" / f"rank{r}.json").read_text()) for r in range(2)]


def check(outs: list[dict[str, Any]], every: int, exact_losses: bool = True) -> None:
    """Assert what the job must show: agreed rollbacks, bit-identical states, same replays."""
    e = every
    for o in outs:
        rb = o["rollbacks"]
        assert [(r["at"], r["to"], r["source"]) for r in rb] == [
            (7 * e // 2, 3 * e, "memory"), (11 * e // 2, 2 * e, "disk")], rb
        assert all(r["diff"] == [] for r in rb), rb  # bit-identical to the save
        steps = [s for s, _ in o["losses"]]
        assert steps == [*range(0, 7 * e // 2), *range(3 * e, 11 * e // 2),
                         *range(2 * e, 7 * e)], steps
        # Replays of a step from the restored state and RNG give the same loss.
        first: dict[int, float] = {}
        for s, loss in o["losses"]:
            ref = first.setdefault(s, loss)
            assert loss == ref or not exact_losses and abs(loss - ref) <= 1e-5 * abs(ref), (
                o["rank"], s, loss, ref)
        # 3E..5E were abandoned by the disk rollback to 2E; 3E..6E saved again since.
        assert o["checkpoints"] == [e * k for k in range(1, 7)], o["checkpoints"]
        assert sorted({w["step"] for w in o["writes"]}) == [e * k for k in range(1, 7)]
        wrong_shape, no_state = o["refused"]
        assert wrong_shape.startswith("state['model']['0.weight']: the saved local shard is "
                                      "(0,), this rank's is ("), wrong_shape
        assert "saved under another sharding" in wrong_shape
        assert no_state.startswith("state['optimizer']['state'][0] is saved but the live "
                                   "state has no such entry"), no_state
    # Each rank its own data and dropout: the ranks' losses differ.
    assert outs[0]["losses"] != outs[1]["losses"]


if __name__ == "__main__":
    sys.exit(main())
