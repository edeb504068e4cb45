#!/usr/bin/env python3
"""Benchmark checkpoints v2 on a GPU: save stall, throughput, rollback memory/disk/restart.

One command, for the lead's GPU session (about 5-7 minutes on one H200)::

    python bench/checkpoint_gpu.py --out "$OUT"

For each model (``gpt100m``, the example's 100M config in fp32 with bf16 autocast, and
``gpt1b``, 1.0B parameters held in bf16 with AdamW) it trains the example's GPT on
synthetic tokens and measures, in one process:

- for each snapshot path of ``--variants`` (``host``: device-to-host copy that
  ``fence()`` waits for; ``gpu``: staged in GPU memory, drained to host in the
  background), in the same rounds: the throughput with a checkpoint every 50 steps
  against none (segments of 200 steps, 100 for gpt1b, with a save every 50 and without,
  alternated so drift hits all alike; the ratio of tokens/s), time inside ``save()``
  (saves allocating buffers reported apart), the GPU time the loop's stream waits at
  ``fence()`` (CUDA events), and median step times: the step after a save, steps
  while a background write runs, steps with none, steps without checkpoints -- the
  first shows the fence's cost, the second the writer thread's (the GIL);
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
from sentinel.train.asyncsave import STAGES, AsyncCheckpointer  # noqa: E402
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
# 50-step blocks per segment when --segment-blocks is not given: gpt1b's 50 steps take
# ~5 s, so two blocks keep a run of both models and two variants near 6 minutes.
SEGMENT_BLOCKS = {"gpt1b": 2}
# Blocks of the warm-up's segments with checkpoints: four saves allocate the three
# buffer sets coalescing uses (held target, being written, queued) and reuse one.
WARM_BLOCKS = 4
# A step this many times the median step without checkpoints is reported as slow.
SLOW = 1.5
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
        self.ckpt = self.checkpointer(budget, "host")
        self.step = 0
        self.ram_snapshots = 0.0  # when set, the RAM budget in snapshots (see throughput)
        self.gen = torch.Generator(device=device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=device.type == "cuda" and dtype == torch.float32)
        # When a list, each fence() with a copy to wait for adds a pair of CUDA events
        # around it: the GPU time the loop's stream stood waiting for the snapshot copy.
        self.fence_events: list[tuple[Any, Any]] | None = None

    def checkpointer(self, budget: int, stage: str) -> AsyncCheckpointer:
        """Return a checkpointer of this bench's store that snapshots through ``stage``."""
        return AsyncCheckpointer(self.store, ram_budget_bytes=budget,
                                 overlap=self.device.type == "cuda", stage=stage)

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
        if self.fence_events is not None and self.ckpt.fence_pending:
            before = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            after = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            before.record()
            self.ckpt.fence()
            after.record()
            self.fence_events.append((before, after))
        else:
            self.ckpt.fence()
        self.opt.step()
        self.step += 1
        return float(loss.detach())  # syncs: the step is done

    def tokens(self, steps: int) -> int:
        return steps * self.cfg.batch_size * self.cfg.seq_len


def snapshot_nbytes(state: dict[str, Any]) -> int:
    """Return the bytes of the distinct tensors of ``state`` (what a snapshot holds)."""
    return ckmod._state_nbytes(state)[0]


def variant_spec(variant: str) -> tuple[str, str]:
    """Return (AsyncCheckpointer stage, CheckpointStore load_check) of a --variants name.

    ``host``/``gpu``/``auto`` name the stage; a ``+loadcheck`` suffix makes every
    write load its file back (the writer before "auto" skipped that for plain states).
    """
    stage, _, extra = variant.partition("+")
    if stage not in STAGES or extra not in ("", "loadcheck"):
        raise ValueError(f"variant {variant!r}: expected one of {', '.join(STAGES)}, "
                         "optionally with +loadcheck")
    return stage, "always" if extra else "auto"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _segment(b: Bench, ck: AsyncCheckpointer | None, per_segment: int, rec: dict[str, Any],
             count: bool, load_check: str = "auto") -> float:
    """Train one segment (a save every 50 steps with ``ck``, none without); its seconds.

    Each step's time goes to ``rec["steps"]`` by kind: "save" (the step right after a
    save: it carries the fence wait), "writing" (a background write under way),
    "idle" (with checkpoints, nothing being written), "without" (no checkpointer).
    """
    for c in rec["all"]:
        c.wait()
    if b.device.type == "cuda":
        torch.cuda.synchronize()
    if ck is not None:
        b.ckpt = ck
    b.store.load_check = load_check  # the writes of this segment (the last one's waited)
    fences: list[tuple[Any, Any]] = []
    b.fence_events = fences if b.device.type == "cuda" and ck is not None else None
    t0 = time.perf_counter()
    for k in range(EVERY * per_segment):
        kind = "without"
        if ck is not None and k % EVERY == 0:
            state = b.state()
            if b.ram_snapshots:  # the budget in snapshots: buffers are reused after
                ck.budget = int(b.ram_snapshots * snapshot_nbytes(state))
            st = ck.save(b.step, state)
            kind = "save"
            rec["counted_saves"] += count
            rec["counted_allocating"] += count and st.allocated
            (rec["allocating"] if st.allocated else rec["blocked"]).append(st.blocked_s)
            if not st.allocated:
                rec["waited"].append(st.waited_s)
            rec["staged"].append(st.staged)
            if st.superseded is not None:
                rec["superseded"].append(st.superseded)
        elif ck is not None:
            kind = "writing" if ck.pending() else "idle"
        ts = time.perf_counter()
        b.train_step()
        if count:
            rec["steps"][kind].append(time.perf_counter() - ts)
    dt = time.perf_counter() - t0
    b.fence_events = None
    if count:
        rec["fence_wait_s"] += [x.elapsed_time(y) / 1e3 for x, y in fences]
    return dt


def throughput(b: Bench, ckpts: dict[str, AsyncCheckpointer], pairs: int,
               per_segment: int, warm_blocks: int = WARM_BLOCKS) -> dict[str, Any]:
    """Per variant, the ratio of throughput with a checkpoint every 50 steps to none.

    A round trains one segment without checkpoints and one with each variant's
    checkpointer, in turn, so drift hits all alike; ``pairs`` rounds are counted after
    a first one that warms up kernels and allocates the buffers (its segments with
    checkpoints ``warm_blocks`` long). A segment is
    ``per_segment`` blocks of 50 steps; with checkpoints every block starts with a save,
    whose background write overlaps the segment's training, as in a run (only the last
    one's tail runs past it). Between segments the bench waits for writes to end,
    untimed, so a "without" segment carries none. Per variant: time blocked in save(),
    the fence wait (GPU time, CUDA events), and step times by kind (see _segment): the
    step after a save against steps without tells the fence's cost (a) from the
    writer's (b), which shows in the "writing" steps.
    """
    order: list[str | None] = [None, *ckpts]
    rec: dict[str | None, dict[str, Any]] = {
        v: {"all": list(ckpts.values()), "seg": [], "blocked": [], "allocating": [],
            "waited": [], "staged": [], "superseded": [], "fence_wait_s": [], "counted_saves": 0,
            "counted_allocating": 0,
            "steps": {k: [] for k in ("save", "writing", "idle", "without")}}
        for v in order}
    for rnd in range(pairs + 1):
        for v in order:
            # The warm-up's segments with checkpoints save often enough to allocate every
            # buffer set, so no counted save pays for pinning gigabytes.
            blocks = per_segment if rnd or not v else max(per_segment, warm_blocks)
            dt = _segment(b, ckpts[v] if v else None, blocks, rec[v], rnd > 0,
                          variant_spec(v)[1] if v else "auto")
            if rnd > 0:
                rec[v]["seg"].append(dt)
    for c in ckpts.values():
        c.wait()
    steps = EVERY * per_segment
    base = rec[None]
    step_without = _median(base["steps"]["without"]) or 0.0
    out: dict[str, Any] = {
        "steps_per_segment": steps, "checkpoint_every": EVERY, "segments_each": pairs,
        "goal_ratio": 0.99, "goal_blocked_s": 0.2,
        "segment_s_without": base["seg"], "step_s_without_median": step_without,
        "tokens_per_s_without": b.tokens(steps * pairs) / sum(base["seg"]), "variants": {}}
    for v, c in ckpts.items():
        r = rec[v]
        written = c.drain_saved()
        saves = r["counted_saves"]
        counted = sum(len(x) for x in r["steps"].values())
        out["variants"][v] = {
            "stage": c.stage, "staged": r["staged"], "staging_bytes": c.staging_bytes(),
            "throughput_ratio": sum(base["seg"]) / sum(r["seg"]),
            "tokens_per_s_with": b.tokens(steps * pairs) / sum(r["seg"]),
            "segment_s_with": r["seg"],
            "save_blocked_s_median": _median(r["blocked"]),
            "save_blocked_s_max": max(r["blocked"]) if r["blocked"] else None,
            "save_blocked_s_all": r["blocked"], "save_blocked_s_allocating": r["allocating"],
            # Counted saves that allocated buffers (should be none after the warm-up).
            "counted_saves_allocating": r["counted_allocating"],
            # The part of each stall spent waiting for an earlier write to free a buffer.
            "save_waited_for_write_s": r["waited"],
            "fence_wait_s_median": _median(r["fence_wait_s"]),
            "fence_wait_s_all": r["fence_wait_s"],
            "step_s_median": {k: _median(x) for k, x in r["steps"].items() if x},
            # Throughput follows the mean: a few slow steps move it, not the median.
            "step_s_mean": {k: statistics.fmean(x) for k, x in r["steps"].items() if x},
            # Steps over SLOW x the median step without checkpoints: (kind, seconds).
            "slow_steps": [(k, t) for k, x in r["steps"].items() for t in x
                           if t > SLOW * step_without],
            "steps_counted": {k: len(x) for k, x in r["steps"].items()},
            # What each save cost the segment beyond its steps at the "without" pace
            # (save() itself included): the per-save loss the ratio comes from.
            "loss_per_save_s": ((sum(r["seg"]) - counted * step_without) / saves
                                if saves else None),
            # Saves that replaced a queued one before its write (when_behind="coalesce").
            "superseded_steps": r["superseded"], "saves_requested": len(r["staged"]),
            "background_write_s": [w for _, w in written],
            "checkpoint_bytes": written[-1][0].size if written else None,
            "snapshot_bytes": c.last.nbytes if c.last else None,
        }
    return out


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
              upload_max: int, parts: tuple[str, ...] = PARTS,
              variants: tuple[str, ...] = ("host", "gpu")) -> dict[str, Any]:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    b = Bench(name, device, work, budget)
    b.ram_snapshots = ram_snapshots
    out: dict[str, Any] = {"params": b.params, "dtype": str(next(b.model.parameters()).dtype),
                           "batch": [b.cfg.batch_size, b.cfg.seq_len]}
    print(f"{name}: {b.params / 1e6:.1f}M parameters", flush=True)
    b.ckpt.close()
    ckpts = {v: b.checkpointer(budget, variant_spec(v)[0]) for v in variants}
    out["throughput"] = throughput(b, ckpts, pairs, per_segment)
    print(variant_table(name, out["throughput"]), flush=True)
    b.ckpt = ckpts[variants[-1]]
    for c in ckpts.values():
        if c is not b.ckpt:
            c.close()
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


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def variant_table(name: str, t: dict[str, Any]) -> str:
    """Return one line per variant: ratio, stalls, fence wait, step times by kind (ms)."""
    base = t["step_s_without_median"]
    lines = [f"{name}: step without checkpoints {_ms(base)} ms (median)",
             f"  {'variant':14s} {'ratio':>6s} {'blocked':>8s} {'fence':>7s} {'after-save':>10s}"
             f" {'writing':>13s} {'idle':>6s} {'loss/save':>9s} {'slow steps':>14s}"
             f" {'superseded':>10s}  (ms)"]
    for v, r in t["variants"].items():
        st, mean = r["step_s_median"], r["step_s_mean"]
        slow = r["slow_steps"]
        lines.append(
            f"  {v:14s} {r['throughput_ratio']:6.4f} {_ms(r['save_blocked_s_median']):>8s} "
            f"{_ms(r['fence_wait_s_median']):>7s} {_ms(st.get('save')):>10s} "
            f"{_ms(st.get('writing')) + '/' + _ms(mean.get('writing')):>13s} "
            f"{_ms(st.get('idle')):>6s} {_ms(r['loss_per_save_s']):>9s} "
            f"{f'{len(slow)}: +' + _ms(sum(x - base for _, x in slow)):>14s} "
            f"{len(r['superseded_steps']):>4d} of {r['saves_requested']:<3d}"
            + (f"  ({r['counted_saves_allocating']} counted saves allocated)"
               if r["counted_saves_allocating"] else "")
            + ("" if all(r["staged"]) or not any(r["staged"]) else "  (staged some)")
            + ("  staged on GPU" if r["staged"] and all(r["staged"]) else ""))
    return "\n".join(lines)


def text_report(res: dict[str, Any]) -> str:
    lines = [f"checkpoint_gpu on {res['device']} (torch {res['torch']}), {res['date']}",
             "ratio: tokens/s with a checkpoint every 50 steps / without (goal >= 0.99); "
             "blocked: in save(); fence: GPU time the loop's stream waited for the copy; "
             "after-save/writing/idle: median step times (the step after a save, steps "
             "while a write runs (median/mean), steps with none); loss/save: segment time "
             "beyond its steps at the without pace, per save; slow steps: how many took "
             f"over {SLOW}x the median step without, and their time beyond it"]
    for name, r in res["models"].items():
        t, rb = r["throughput"], r.get("rollback")
        first = next(iter(t["variants"].values()))
        lines += [
            f"\n{name}: {r['params'] / 1e6:.1f}M parameters, {r['dtype']}, "
            f"checkpoint {(first['checkpoint_bytes'] or 0) / 1e9:.2f} GB",
            variant_table(name, t),
        ]
        for v, x in t["variants"].items():
            lines.append(f"  {v}: allocating saves {_fmt(x['save_blocked_s_allocating'])} s; "
                         f"background writes {_fmt(x['background_write_s'])} s")
        if rb:
            lines.append(f"  rollback request -> first step: memory {rb['memory']['median_s']:.3f}"
                         f" s (goal < 0.5), disk {rb['disk']['median_s']:.3f} s, restart "
                         f"{rb['restart']['median_s']:.2f} s; restart/memory "
                         f"{rb['restart_over_memory']:.1f}x (goal >= 25)")
        if "upload" in r:
            lines.append(f"  upload: {r['upload']}")
    return "\n".join(lines) + "\n"


def _fmt(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=Path(os.environ.get("OUT", "out/checkpoint_gpu")))
    ap.add_argument("--models", default="gpt100m,gpt1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pairs", type=int, default=2,
                    help="segments with and without checkpoints (after a warm-up pair)")
    ap.add_argument("--segment-blocks", type=int, default=None,
                    help="50-step blocks per segment (a save starts each in 'with'); "
                         "default 2 for gpt1b (its steps are slow), else 4")
    ap.add_argument("--variants", default="host,gpu",
                    help="snapshot paths to compare, each in the same rounds: "
                         "AsyncCheckpointer stage= values (host, gpu, auto), each "
                         "optionally +loadcheck (every write loads its file back)")
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
    try:
        [variant_spec(v) for v in args.variants.split(",")]
    except ValueError as e:
        ap.error(f"--variants: {e}")
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
            blocks = args.segment_blocks or SEGMENT_BLOCKS.get(name, 4)
            res["models"][name] = run_model(name, device, work, args.pairs, blocks,
                                            args.repeats,
                                            int(args.ram_gb * (1 << 30)), args.ram_snapshots,
                                            int(args.upload_max_gb * 1e9),
                                            tuple(p for p in args.parts.split(",") if p),
                                            tuple(args.variants.split(",")))
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
