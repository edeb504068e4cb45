#!/usr/bin/env python3
"""Benchmark checkpoints v2 on a GPU: save stall, throughput, rollback memory/disk/restart.

One command, for the lead's GPU session (about 5-7 minutes on one H200)::

    python bench/checkpoint_gpu.py --out "$OUT"

For each model (``gpt100m``, the example's 100M config in fp32 with bf16 autocast, and
``gpt1b``, 1.0B parameters held in bf16 with AdamW) it trains the example's GPT on
synthetic tokens and measures, in one process:

- save stall: time inside ``AsyncCheckpointer.save`` (the loop is blocked) per
  checkpoint, plus the GPU time the loop's stream waits at ``fence()``, which shows in
  the throughput; the first two saves allocate pinned buffers and are reported apart;
- throughput with a checkpoint every 50 steps against none: segments of 200 steps with
  a save every 50 (their background writes overlapping the training) and without,
  alternated so drift hits both alike; the ratio of tokens/s;
- rollback, request to the end of the first step after it (the real RollbackHandler,
  a signed request and SIGUSR1): target held in host RAM, target read from disk (no
  held copy), and a process restart from the same checkpoint (spawn, import, build,
  load, first step), medians;
- upload to S3 (``sentinel.train.offload``) against moto's server, if moto and boto3 are
  importable there; otherwise the JSON says "skipped" and why.

Writes ``checkpoint_gpu.json`` and ``checkpoint_gpu.txt`` to ``--out`` (default $OUT,
else ./out/checkpoint_gpu). ``--quick --device cpu`` runs a tiny model on CPU in
about a minute, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812

from sentinel.examples.gpt import CONFIGS, GPT, ModelConfig  # noqa: E402
from sentinel.train import checkpoint as ckmod  # noqa: E402
from sentinel.train.asyncsave import AsyncCheckpointer  # noqa: E402
from sentinel.train.checkpoint import (  # noqa: E402
    CheckpointStore,
    restore_training_state,
    training_state,
)
from sentinel.train.data import DataPosition  # noqa: E402
from sentinel.train.request import read_result, submit  # noqa: E402
from sentinel.train.rollback import RollbackHandler  # noqa: E402
from sentinel.train.skipplan import SkipPlan  # noqa: E402

# 12 * 2048^2 * 20 = 1.007B parameters in the blocks; held in bf16 with AdamW (bf16
# moments): 6 GB of checkpoint, which fits one H200 many times over.
MODELS: dict[str, tuple[ModelConfig, torch.dtype]] = {
    "gpt100m": (CONFIGS["gpt100m"], torch.float32),
    "gpt1b": (ModelConfig(2048, 20, 16, 1024, 8, 3e-4, 100, 0), torch.bfloat16),
    "tiny": (CONFIGS["tiny"], torch.float32),
}
EVERY = 50
PARTS = ("rollback", "upload")  # beyond the throughput, which every run measures


class Bench:
    """One model, optimizer and checkpoint store; a training loop with a step counter."""

    def __init__(self, name: str, device: torch.device, work: Path, budget: int,
                 writer: bool = True) -> None:
        self.cfg, dtype = MODELS[name]
        self.name, self.device, self.work = name, device, work
        torch.manual_seed(0)
        self.model = GPT(self.cfg).to(device=device, dtype=dtype)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr,
                                     betas=(0.9, 0.95), weight_decay=0.1)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.store = CheckpointStore(work / "checkpoints", keep=2, writer=writer)
        self.ckpt = AsyncCheckpointer(self.store, ram_budget_bytes=budget,
                                      overlap=device.type == "cuda")
        self.step = 0
        self.ram_snapshots = 0.0  # when set, the RAM budget in snapshots (see throughput)
        self.gen = torch.Generator(device=device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=device.type == "cuda" and dtype == torch.float32)

    def state(self) -> dict[str, Any]:
        return training_state(self.model, self.opt, None, DataPosition(self.step),
                              {"step": self.step})

    def restore(self, state: dict[str, Any]) -> None:
        restore_training_state(state, self.model, self.opt, None)
        self.step = int(state["extra"]["step"])

    def train_step(self) -> float:
        self.gen.manual_seed(self.step)
        x = torch.randint(0, 256, (self.cfg.batch_size, self.cfg.seq_len + 1),
                          device=self.device, generator=self.gen)
        with self.autocast:
            logits = self.model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.ckpt.fence()
        self.opt.step()
        self.step += 1
        return float(loss.detach())  # syncs: the step is done

    def tokens(self, steps: int) -> int:
        return steps * self.cfg.batch_size * self.cfg.seq_len


def snapshot_nbytes(state: dict[str, Any]) -> int:
    """Return the bytes of the distinct tensors of ``state`` (what a snapshot holds)."""
    return ckmod._state_nbytes(state)[0]


def throughput(b: Bench, pairs: int, per_segment: int) -> dict[str, Any]:
    """Alternate segments with a checkpoint every 50 steps and without; stalls and ratio.

    A segment is ``per_segment`` blocks of 50 steps. In a "with" segment every block
    starts with a save, and the background writes of those saves overlap the segment's
    training, as in a run (only the last one's tail runs past it). Between segments the
    bench waits for the writes to end, untimed, so that a "without" segment carries none.
    The first pair warms up kernels and allocates the pinned buffers; it is not counted.
    """
    with_s, without_s, stalls, allocating, waits = [], [], [], [], []
    superseded: list[int] = []
    for i in range(2 * pairs + 2):
        save = i % 2 == 1
        b.ckpt.wait()
        if b.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(EVERY * per_segment):
            if save and k % EVERY == 0:
                state = b.state()
                if b.ram_snapshots:  # the budget in snapshots: buffers are reused after
                    b.ckpt.budget = int(b.ram_snapshots * snapshot_nbytes(state))
                st = b.ckpt.save(b.step, state)
                (allocating if st.allocated else stalls).append(st.blocked_s)
                if not st.allocated:
                    waits.append(st.waited_s)
                if st.superseded is not None:
                    superseded.append(st.superseded)
            b.train_step()
        dt = time.perf_counter() - t0
        if i >= 2:
            (with_s if save else without_s).append(dt)
    b.ckpt.wait()
    written = b.ckpt.drain_saved()
    steps = EVERY * per_segment
    ratio = sum(without_s) / sum(with_s)
    return {
        "steps_per_segment": steps, "checkpoint_every": EVERY, "segments_each": len(with_s),
        "tokens_per_s_without": b.tokens(steps * len(without_s)) / sum(without_s),
        "tokens_per_s_with": b.tokens(steps * len(with_s)) / sum(with_s),
        "segment_s_without": without_s, "segment_s_with": with_s,
        "throughput_ratio": ratio, "goal_ratio": 0.99,
        "save_blocked_s_median": statistics.median(stalls) if stalls else None,
        "save_blocked_s_max": max(stalls) if stalls else None,
        "save_blocked_s_all": stalls, "save_blocked_s_allocating": allocating,
        # The part of each stall spent waiting for an earlier write to free a buffer:
        # saves come faster than the disk takes them.
        "save_waited_for_write_s": waits,
        # Saves that replaced a queued one before its write (AsyncCheckpointer's
        # when_behind="coalesce"): the steps never written, and how many were asked for.
        "superseded_steps": superseded, "saves_requested": len(stalls) + len(allocating),
        "goal_blocked_s": 0.2,
        "background_write_s": [w for _, w in written],
        "checkpoint_bytes": written[-1][0].size if written else None,
        "snapshot_bytes": b.ckpt.last.nbytes if b.ckpt.last else None,
    }


def rollback_once(b: Bench, handler: RollbackHandler, run_dir: Path, target: int) -> dict[str,
                                                                                          Any]:
    """Request a rollback to ``target`` and time it to the end of the first step after."""
    for _ in range(3):
        b.train_step()
    t0 = time.perf_counter()
    req = submit(run_dir, "bench", target, [], request_id=uuid.uuid4().hex,
                 requested_by="bench", reason="bench", pids=[os.getpid()]).request
    out = handler.at_step_boundary(b.step)
    assert out is not None, "the handler did not apply the request"
    b.train_step()
    total = time.perf_counter() - t0
    res = read_result(run_dir, req.id) or {}
    return {"source": out.source, "request_to_first_step_s": total, "read_s": out.read_s,
            "restore_s": out.restore_s, "status": res.get("status")}


RESTART = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from bench.checkpoint_gpu import Bench
b = Bench(sys.argv[2], torch.device(sys.argv[3]), __import__("pathlib").Path(sys.argv[4]), 0,
          writer=False)
info, state = b.store.load_latest(map_location=b.device)
b.restore(state)
b.train_step()
print("first_step_end", time.time(), info.step, flush=True)
"""


def restart_once(b: Bench, work: Path) -> float:
    """Spawn a process that loads the newest checkpoint and runs one step; return seconds."""
    b.ckpt.wait()
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", RESTART, str(ROOT), b.name, str(b.device),
                          str(work)], capture_output=True, text=True, timeout=300, check=True)
    end = next(line for line in out.stdout.splitlines() if line.startswith("first_step_end"))
    return float(end.split()[1]) - t0


def rollbacks(b: Bench, work: Path, repeats: int) -> dict[str, Any]:
    """Rollback from memory, from disk, and a restart, all to the same checkpoint."""
    run_dir = work / "run"
    run_dir.mkdir(exist_ok=True)
    plan = SkipPlan(run_dir)
    target = b.step
    b.ckpt.save(target, b.state())
    b.ckpt.wait()
    res: dict[str, Any] = {"target_step": target}
    for source, memory in (("memory", b.ckpt), ("disk", None)):
        handler = RollbackHandler(run_dir, "bench", b.store, plan, b.restore,
                                  map_location=b.device, memory=memory, poll_interval_s=1e9)
        handler.install()
        try:
            runs = [rollback_once(b, handler, run_dir, target) for _ in range(repeats)]
        finally:
            handler.uninstall()
        assert all(r["source"] == source for r in runs), runs
        res[source] = {"median_s": statistics.median(r["request_to_first_step_s"]
                                                     for r in runs), "runs": runs}
    restarts = [restart_once(b, work) for _ in range(max(1, repeats - 1))]
    res["restart"] = {"median_s": statistics.median(restarts), "runs": restarts}
    res["restart_over_memory"] = res["restart"]["median_s"] / res["memory"]["median_s"]
    res["goal_memory_s"], res["goal_restart_over_memory"] = 0.5, 25.0
    return res


def upload(b: Bench, max_bytes: int) -> dict[str, Any]:
    """Upload the newest checkpoint to moto's S3 server; skipped without moto/boto3.

    moto keeps objects in Python memory at tens of MB/s, so a checkpoint larger than
    ``max_bytes`` is skipped to keep the run within its time.
    """
    try:
        from moto.server import ThreadedMotoServer

        from sentinel.train.offload import S3Remote
    except ImportError as e:
        return {"skipped": f"not importable here: {e}"}
    size = b.store.checkpoints()[-1].size
    if size > max_bytes:
        return {"skipped": f"checkpoint of {size} bytes > --upload-max-gb"}
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        remote = S3Remote(f"s3://bench-{uuid.uuid4().hex[:8]}/run",
                          endpoint_url=f"http://{host}:{port}", region="us-east-1",
                          create_bucket=True)
        info = b.store.checkpoints()[-1]
        t0 = time.perf_counter()
        remote.upload(b.store.dir / info.file, info.file, info.sha256)
        dt = time.perf_counter() - t0
        return {"bytes": info.size, "seconds": dt, "MB_per_s": info.size / dt / 1e6,
                "server": "moto ThreadedMotoServer (in-process, loopback)"}
    finally:
        server.stop()


def run_model(name: str, device: torch.device, root: Path, pairs: int, per_segment: int,
              repeats: int, budget: int, ram_snapshots: float,
              upload_max: int, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    b = Bench(name, device, work, budget)
    b.ram_snapshots = ram_snapshots
    out: dict[str, Any] = {"params": b.params, "dtype": str(next(b.model.parameters()).dtype),
                           "batch": [b.cfg.batch_size, b.cfg.seq_len]}
    print(f"{name}: {b.params / 1e6:.1f}M parameters", flush=True)
    out["throughput"] = throughput(b, pairs, per_segment)
    print(f"{name}: throughput {json.dumps(out['throughput'])[:300]}", flush=True)
    if "rollback" in parts:
        out["rollback"] = rollbacks(b, work, repeats)
        print(f"{name}: rollback memory {out['rollback']['memory']['median_s']:.3f} s, disk "
              f"{out['rollback']['disk']['median_s']:.3f} s, restart "
              f"{out['rollback']['restart']['median_s']:.3f} s", flush=True)
    if "upload" in parts:
        out["upload"] = upload(b, upload_max)
    b.ckpt.close()
    out["seconds"] = time.perf_counter() - t0
    del b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(work, ignore_errors=True)
    return out


def text_report(res: dict[str, Any]) -> str:
    lines = [f"checkpoint_gpu on {res['device']} (torch {res['torch']}), {res['date']}"]
    for name, r in res["models"].items():
        t, rb = r["throughput"], r.get("rollback")
        ratio_goal = ">= 0.99"
        lines += [
            f"\n{name}: {r['params'] / 1e6:.1f}M parameters, {r['dtype']}, "
            f"checkpoint {(t['checkpoint_bytes'] or 0) / 1e9:.2f} GB",
            f"  save blocks the loop: median {t['save_blocked_s_median']} s, max "
            f"{t['save_blocked_s_max']} s (goal < 0.2); allocating saves "
            f"{t['save_blocked_s_allocating']}",
            f"  background write (write+fsync+sha256+verify+manifest): {t['background_write_s']}",
            f"  superseded before their write (disk behind): {len(t['superseded_steps'])} of "
            f"{t['saves_requested']} saves",
            f"  throughput with a checkpoint every 50 steps / without: "
            f"{t['throughput_ratio']:.4f} (goal {ratio_goal}); tokens/s "
            f"{t['tokens_per_s_with']:.0f} / {t['tokens_per_s_without']:.0f}",
        ]
        if rb:
            lines.append(f"  rollback request -> first step: memory {rb['memory']['median_s']:.3f}"
                         f" s (goal < 0.5), disk {rb['disk']['median_s']:.3f} s, restart "
                         f"{rb['restart']['median_s']:.2f} s; restart/memory "
                         f"{rb['restart_over_memory']:.1f}x (goal >= 25)")
        if "upload" in r:
            lines.append(f"  upload: {r['upload']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(os.environ.get("OUT", "out/checkpoint_gpu")))
    ap.add_argument("--models", default="gpt100m,gpt1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pairs", type=int, default=2,
                    help="segments with and without checkpoints (after a warm-up pair)")
    ap.add_argument("--segment-blocks", type=int, default=4,
                    help="50-step blocks per segment (a save starts each in 'with')")
    ap.add_argument("--repeats", type=int, default=3, help="rollbacks of each kind")
    ap.add_argument("--ram-gb", type=float, default=32.0,
                    help="host RAM budget for snapshots (unless --ram-snapshots)")
    ap.add_argument("--ram-snapshots", type=float, default=3.5,
                    help="host RAM budget as this many snapshots of the model (0: --ram-gb);"
                         " 3.5 holds three: the rollback target, one being written and one"
                         " queued, so a save need not wait for the disk unless writes keep"
                         " falling behind")
    ap.add_argument("--upload-max-gb", type=float, default=1.5,
                    help="upload (to moto) only checkpoints up to this size")
    ap.add_argument("--work", type=Path, default=None,
                    help="where checkpoints are written (default: a temporary directory)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="what to measure after the throughput (comma-separated, may be empty)")
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (CPU check)")
    args = ap.parse_args()
    if args.quick:
        args.models, args.pairs, args.segment_blocks, args.repeats = "tiny", 1, 2, 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ckbench-"))
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                          time.gmtime()),
        "write_piece_bytes": ckmod.WRITE_PIECE_BYTES, "models": {},
    }
    try:
        for name in args.models.split(","):
            res["models"][name] = run_model(name, device, work, args.pairs, args.segment_blocks,
                                            args.repeats,
                                            int(args.ram_gb * (1 << 30)), args.ram_snapshots,
                                            int(args.upload_max_gb * 1e9),
                                            tuple(p for p in args.parts.split(",") if p))
            (args.out / "checkpoint_gpu.json").write_text(json.dumps(res, indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report = text_report(res)
    (args.out / "checkpoint_gpu.txt").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
