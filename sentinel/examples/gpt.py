"""Train a small GPT on the Python standard library's source bytes, with sentinel.train.

A real decoder-only transformer (byte-level, vocabulary 256) trained on a real corpus
that is on every machine with Python: the standard library's ``.py`` files, read in a
fixed order. bf16 autocast on CUDA when present, fp32 on CPU otherwise.

What it shows:
- ``Reporter`` every step (loss, grad norm, tokens, the global batch index);
- ``CheckpointStore`` every ``--checkpoint-every`` steps, resuming from the newest
  verified checkpoint at start (so a Slurm ``--requeue`` continues the run); saved
  through ``AsyncCheckpointer`` (on by default): a snapshot to host memory, written in
  the background, the newest verified ones held in RAM (``--checkpoint-ram-gb``) so a
  rollback to them reads no disk; every rank's RNG state is saved and restored; with
  ``SENTINEL_CHECKPOINT_URL=s3://BUCKET/PREFIX`` (and ``SENTINEL_CHECKPOINT_ENDPOINT``
  for a non-AWS store) each checkpoint is uploaded in the background and local copies
  beyond ``--keep`` are deleted once uploaded;
- the resumable data position plus ``SkipPlan``: the batch for global index ``i`` is a
  pure function of ``i``, so skipping ranges and resuming are exact;
- the rollback handler (on by default): ``sentinel rollback`` makes the job reload a
  checkpoint in-process and skip batches;
- ``--inject-bad-batch I[,J...]`` replaces global batches I, J with corrupted data
  (random bytes) that spikes the loss and knocks the model off its trend;
- ``--data-file FILE`` reads every batch from FILE (written by ``--write-data FILE``)
  with ``O_DIRECT``, so the job's reads reach the storage at each step (slow storage
  shows in its step time and the node's disk latency), as a real dataloader's do;
- SIGTERM (Slurm's requeue, scancel, preemption): the rank tells the agent it stopped
  on purpose (``Reporter.finish``) and exits 143, so a job moved to other nodes leaves
  no "stalled" rank behind on the old one.

Runs single-process, or distributed when started with RANK/WORLD_SIZE/MASTER_ADDR/
MASTER_PORT in the environment (torchrun or by hand) or as the tasks of ``srun``
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set): gloo on
CPU, NCCL on CUDA.

Logs: ``--log-jsonl`` writes the detector-input format (step, loss, grad_norm,
tokens_per_sec, time, node); ``RUN_DIR/log/rank{R}.jsonl`` records every step's global
batch index, skipped batches, checkpoints, evaluations, resumes and rollbacks.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import signal
import socket
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from sentinel import jsonnum
from sentinel.train import (
    AsyncCheckpointer,
    CheckpointError,
    CheckpointStore,
    EpochShuffleSampler,
    Reporter,
    ResumableBatches,
    RollbackHandler,
    SkipPlan,
    restore_training_state,
    training_state,
)
from sentinel.train.offload import Offloader, remote_from_env


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int  # global, in sequences
    lr: float
    warmup_steps: int
    corpus_bytes: int


CONFIGS = {
    # Hundreds of steps a minute on one CPU core.
    "tiny": ModelConfig(64, 2, 4, 64, 16, 3e-3, 20, 4 << 20),
    "small": ModelConfig(256, 4, 4, 256, 16, 1e-3, 50, 16 << 20),
    # About 100M parameters (14 x 12 d^2 = 99M): a realistic single-H100 config.
    "gpt100m": ModelConfig(768, 14, 12, 1024, 16, 6e-4, 100, 64 << 20),
}
# Held-out fraction of the corpus for the evaluation loss.
VAL_FRACTION = 0.02
EVAL_BATCHES = 4
# O_DIRECT needs offsets and lengths aligned to the device's logical block (512 B or
# 4 KiB); 4 KiB suits both.
DIRECT_ALIGN = 4096
# Exit status after SIGTERM, as a shell reports a process killed by it.
EXIT_TERMINATED = 128 + signal.SIGTERM
# On SIGTERM a background checkpoint write gets this long to finish: well inside Slurm's
# default 30 s KillWait, and a write of a few GB takes seconds.
SIGTERM_WRITE_WAIT_S = 20.0
# At the end of the run, uploads still under way get this long; an unfinished one is
# uploaded again by the next run in this directory.
OFFLOAD_END_WAIT_S = 600.0


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc(self.ln2(x))))
        return out


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for blk in self.blocks:
            x = blk(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


def load_corpus(limit: int) -> bytes:
    """Return up to ``limit`` bytes of the standard library's .py files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts:
            continue
        try:
            out += p.read_bytes()
        except OSError:
            continue
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def bad_batch(x: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    """Return a corrupted stand-in for batch ``x``: uniformly random bytes.

    Random bytes (a shard of binary garbage, say) cost ln(256) = 5.5 nats against a
    model at ~2.4, a 2-4x loss spike, and the clipped but outlying gradient leaves the
    model worse for tens of steps. (A repeated byte does not: it is learned at once
    and its loss drops.) Seeded by the batch index, and drawn from a private generator
    so the run's own RNG streams are untouched.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randint(0, 256, tuple(x.shape), generator=g).to(x.device)


class DirectReader:
    """Read byte ranges of a file with O_DIRECT: from the device every time, never the cache."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError as e:
            raise SystemExit(f"--data-file {path}: cannot open it with O_DIRECT ({e.strerror}); "
                             "valid: a file on a filesystem that supports direct I/O (ext4, "
                             "xfs; not tmpfs)") from None
        self.size = os.fstat(self.fd).st_size
        self.buf = mmap.mmap(-1, 4 * DIRECT_ALIGN)  # page-aligned, as O_DIRECT needs

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes at ``offset`` (whole aligned blocks are read around them)."""
        start = offset - offset % DIRECT_ALIGN
        end = -(-(offset + n) // DIRECT_ALIGN) * DIRECT_ALIGN
        if end - start > len(self.buf):
            self.buf.close()
            self.buf = mmap.mmap(-1, end - start)
        got = os.preadv(self.fd, [memoryview(self.buf)[: end - start]], start)
        if got < offset - start + n:
            raise OSError(f"short read of {got} bytes at {start} (file of {self.size} bytes)")
        return bytes(self.buf[offset - start : offset - start + n])

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)
        self.buf.close()


def write_data(path: Path, config: str) -> int:
    """Write the corpus of ``config`` to ``path`` (the file ``--data-file`` reads); return bytes."""
    data = load_corpus(CONFIGS[config].corpus_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(data)


def parse_steps(text: str) -> set[int]:
    try:
        vals = {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise SystemExit(f"--inject-bad-batch {text!r}: expected I[,J...] batch indices") from None
    if any(v < 0 for v in vals):
        raise SystemExit(f"--inject-bad-batch {text!r}: batch indices must be >= 0")
    return vals


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sentinel.examples.gpt",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/gpt"))
    ap.add_argument("--job", default=None, help="job name (default gpt-CONFIG)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--keep", type=int, default=3, help="newest checkpoints kept")
    ap.add_argument("--async-checkpoint", action=argparse.BooleanOptionalAction, default=True,
                    help="snapshot to host memory and write in the background (default)")
    ap.add_argument("--checkpoint-ram-gb", type=float, default=None, metavar="GB",
                    help="host RAM per rank for snapshots held for rollback (default: a "
                         "quarter of the machine's memory)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--inject-bad-batch", type=parse_steps, default=set(), metavar="I[,J...]",
                    help="global batch indices to replace with corrupted data")
    ap.add_argument("--log-jsonl", type=Path, default=None,
                    help="write the detector-input JSON lines here (rank 0)")
    ap.add_argument("--rollback-handler", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--no-resume", action="store_true",
                    help="start fresh even if checkpoints exist")
    ap.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                    help="resume from this checkpoint (must verify) instead of the newest")
    ap.add_argument("--min-step-seconds", type=float, default=0.0,
                    help="pad each step to at least this long (emulate a slower job)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: default)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--data-file", type=Path, default=None, metavar="FILE",
                    help="read each batch from FILE with O_DIRECT (FILE written by "
                         "--write-data; the same data as the in-memory corpus)")
    ap.add_argument("--write-data", type=Path, default=None, metavar="FILE",
                    help="write the corpus of --config to FILE for --data-file, and exit")
    return ap


@dataclass(frozen=True)
class Placement:
    """Where this process runs: its rank, the world, its local rank and node name."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    node: str = ""


def placement(env: dict[str, str] | None = None) -> Placement:
    """Return rank and world from torchrun's variables, else from srun's, else one process.

    srun's tasks count only with MASTER_ADDR and MASTER_PORT set (the batch script picks
    them); without them a task of a one-task job runs alone.
    """
    e = dict(os.environ) if env is None else env
    node = e.get("SLURMD_NODENAME") or socket.gethostname()
    if "RANK" in e or "WORLD_SIZE" in e:
        return Placement(int(e.get("RANK", "0")), int(e.get("WORLD_SIZE", "1")),
                         int(e.get("LOCAL_RANK", "0")), node)
    if "SLURM_PROCID" in e and "SLURM_NTASKS" in e and "MASTER_ADDR" in e \
            and "MASTER_PORT" in e:
        return Placement(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]),
                         int(e.get("SLURM_LOCALID", "0")), node)
    return Placement(node=node)


class Trainer:
    """One rank of the run: data, model, checkpoints, rollback handler, the loop."""

    def __init__(self, args: argparse.Namespace, where: Placement, device: torch.device) -> None:
        self.args = args
        self.cfg = cfg = CONFIGS[args.config]
        self.where = where
        self.device = device
        self.job = args.job or f"gpt-{args.config}"
        run_dir: Path = args.run_dir
        (run_dir / "log").mkdir(parents=True, exist_ok=True)
        self.batch_log = open(run_dir / "log" / f"rank{where.rank}.jsonl", "a",  # noqa: SIM115
                              buffering=1)
        self.pid = os.getpid()
        self._data()
        torch.manual_seed(args.seed)
        self.model: nn.Module = GPT(cfg).to(device)
        lr = args.lr if args.lr is not None else cfg.lr
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95),
                                     weight_decay=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_at)
        self.train_model: nn.Module = self.model
        if where.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(self.model)
        self.store = CheckpointStore(run_dir / "checkpoints", keep=args.keep,
                                     writer=where.rank == 0, remote=remote_from_env())
        self.offloader: Offloader | None = None
        if self.store.remote is not None and where.rank == 0:
            self.offloader = Offloader(self.store, self.store.remote)  # type: ignore[arg-type]
        self.ckpt: AsyncCheckpointer | None = None
        if args.async_checkpoint:
            budget = (None if args.checkpoint_ram_gb is None
                      else int(args.checkpoint_ram_gb * (1 << 30)))
            # On CUDA the copy overlaps the next forward/backward; fence() before the
            # optimizer step keeps the snapshot exact.
            self.ckpt = AsyncCheckpointer(self.store, ram_budget_bytes=budget,
                                          overlap=device.type == "cuda")
        self.plan = SkipPlan(run_dir)
        self.batches = ResumableBatches(self.make_batch, skip_plan=self.plan,
                                        samples_per_batch=cfg.batch_size // where.world,
                                        on_skip=lambda i: self.note("skip", batch=i))
        self.step = 0
        self.checkpointed = -1  # step of the checkpoint the model state equals
        self.reporter = Reporter(self.job, rank=where.rank)
        self.handler: RollbackHandler | None = None
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=device.type == "cuda")

    def note(self, kind: str, **fields: Any) -> None:
        """Append one record to this rank's log."""
        rec = {"event": kind, "time": time.time(), "pid": self.pid, **fields}
        self.batch_log.write(json.dumps(rec) + "\n")

    def _data(self) -> None:
        """Non-overlapping windows of seq_len+1 bytes; the last VAL_FRACTION held out."""
        cfg, args, device = self.cfg, self.args, self.device
        self.reader = DirectReader(args.data_file) if args.data_file else None
        raw = args.data_file.read_bytes() if args.data_file else load_corpus(cfg.corpus_bytes)
        corpus = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        n_val = int(len(corpus) * VAL_FRACTION)
        self.train_data, val = corpus[:-n_val].to(device), corpus[-n_val:].to(device)
        self.span = span = cfg.seq_len + 1
        n_windows = (len(self.train_data) - 1) // cfg.seq_len
        self.sampler = EpochShuffleSampler(n_windows, cfg.batch_size, seed=args.seed,
                                           rank=self.where.rank, world_size=self.where.world)
        self.offsets = offsets = torch.arange(span, device=device)
        val_starts = torch.arange(0, len(val) - span, cfg.seq_len, device=device)
        self.val_batches = [
            val[val_starts[k::EVAL_BATCHES][: cfg.batch_size, None] + offsets].long()
            for k in range(EVAL_BATCHES)]

    def make_batch(self, i: int) -> torch.Tensor:
        """Return this rank's part of global batch ``i`` (read from the file with --data-file)."""
        windows = self.sampler(i)
        if self.reader is not None:
            rows = b"".join(self.reader.read(w * self.cfg.seq_len, self.span) for w in windows)
            return torch.frombuffer(bytearray(rows), dtype=torch.uint8).view(
                len(windows), self.span).to(self.device).long()
        starts = torch.tensor(windows, device=self.device) * self.cfg.seq_len
        return self.train_data[starts[:, None] + self.offsets].long()

    def _lr_at(self, s: int) -> float:
        if s < self.cfg.warmup_steps:
            return (s + 1) / self.cfg.warmup_steps
        frac = min(1.0, (s - self.cfg.warmup_steps) / max(1, self.args.max_steps
                                                          - self.cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state (at start, or by the rollback handler)."""
        self.batches.seek(restore_training_state(state, self.model, self.opt, self.sched,
                                                 group=self._group()))
        self.step = self.checkpointed = int(state["extra"]["step"])

    def resume(self) -> None:
        """Continue from the newest verified checkpoint (or --resume-from), if any."""
        args, t0 = self.args, time.perf_counter()
        if args.resume_from is not None:
            try:
                info = self.store.info(args.resume_from)
                got = (info, self.store.load(args.resume_from, map_location=self.device)) \
                    if info else None
            except CheckpointError as e:
                raise SystemExit(f"--resume-from {args.resume_from}: {e}") from None
            if got is None:
                raise SystemExit(f"--resume-from {args.resume_from}: no such checkpoint")
        else:
            got = self.store.load_latest(map_location=self.device)
        if got is not None:
            self.restore(got[1])
            self.note("resume", step=self.step, checkpoint=got[0].step,
                      load_s=time.perf_counter() - t0, batch=self.batches.position.batch_index)
            self.reporter.event("resumed", step=self.step, load_s=time.perf_counter() - t0)

    def _group(self) -> Any:
        """Return the CPU (gloo) group of the rollback handler, if any, for small collectives."""
        return self.handler.group if self.handler is not None else None

    def on_sigterm(self, signum: int, _frame: FrameType | None) -> None:
        """Stopped by the scheduler: tell the agent this rank ended on purpose, and exit."""
        if self.ckpt is not None:
            try:  # a write under way is worth finishing within the grace period
                self.ckpt.wait(timeout=SIGTERM_WRITE_WAIT_S)
            except CheckpointError as e:
                self.note("checkpoint_failed", step=self.step, reason=str(e))
        self.reporter.finish(step=self.step, signal=signum)
        self.note("terminated", step=self.step, signal=signum)
        raise SystemExit(EXIT_TERMINATED)

    def evaluate(self) -> float:
        """Return the mean loss over the held-out batches."""
        self.model.eval()
        with torch.no_grad(), self.autocast:
            losses = [F.cross_entropy(self.model(b[:, :-1]).float().flatten(0, 1),
                                      b[:, 1:].flatten()) for b in self.val_batches]
        self.model.train()
        return float(torch.stack(losses).mean())

    def boundary(self) -> None:
        """Before a step: a pending rollback, the periodic checkpoint and evaluation."""
        args, step = self.args, self.step
        if self.handler is not None:
            out = self.handler.at_step_boundary(step)
            if out is not None:
                self.note("rollback", from_step=out.from_step, to_step=out.to_step,
                          request=out.request.id, read_s=out.read_s, restore_s=out.restore_s,
                          total_s=out.total_s, batch=self.batches.position.batch_index)
                step = self.step
        if step % args.checkpoint_every == 0 and step != self.checkpointed:
            self.save_checkpoint(step)
        if self.ckpt is not None:
            for info, write_s in self.ckpt.drain_saved():
                self.note("checkpoint_written", step=info.step, write_s=write_s)
                if self.offloader is not None:
                    self.offloader.poke()
        elif self.offloader is not None and step == self.checkpointed:
            self.offloader.poke()
        if step % args.eval_every == 0:
            self.note("eval", step=step, eval_loss=self.evaluate())

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint the state before ``step`` (every rank: each adds its RNG state)."""
        t0 = time.perf_counter()
        state = training_state(self.model, self.opt, self.sched, self.batches.position,
                               {"step": step, "config": self.args.config}, group=self._group())
        if self.ckpt is not None:
            st = self.ckpt.save(step, state)
            if st.superseded is not None:  # the disk is behind: that step is not written
                self.note("checkpoint_superseded", step=st.superseded, by=step)
        elif self.where.rank == 0:
            self.store.save(step, state)
        self.checkpointed = step
        save_s = time.perf_counter() - t0
        self.note("checkpoint", step=step, save_s=save_s)
        self.reporter.event("checkpoint_saved", step=step, seconds=save_s)

    def train_step(self, jsonl: Any) -> None:
        """Train one batch and report it."""
        args, cfg, world = self.args, self.cfg, self.where.world
        t_step = time.perf_counter()
        b = next(self.batches)
        data_s = time.perf_counter() - t_step  # the wait for input: names a data stall
        x = b.data
        if b.index in args.inject_bad_batch:
            x = bad_batch(x, args.seed, b.index)
            self.note("inject", step=self.step, batch=b.index)
        with self.autocast:
            logits = self.train_model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
        if self.ckpt is not None:
            self.ckpt.fence()  # the snapshot's copy is done before the weights change
        self.opt.step()
        self.sched.step()
        loss_v = float(loss.detach())  # syncs the GPU: the step is done
        dt = time.perf_counter() - t_step
        if args.min_step_seconds > dt:
            time.sleep(args.min_step_seconds - dt)
            dt = args.min_step_seconds
        tokens_per_step = cfg.batch_size * cfg.seq_len
        tps = tokens_per_step / dt
        self.reporter.step(self.step, loss=loss_v, tokens=tokens_per_step // world,
                           grad_norm=grad_norm, samples=cfg.batch_size // world, batch=b.index,
                           data_s=data_s, lr=float(self.sched.get_last_lr()[0]))
        self.note("step", step=self.step, batch=b.index, loss=loss_v, grad_norm=grad_norm,
                  tokens_per_sec=tps, step_s=dt, data_s=data_s)
        if jsonl is not None:
            # NaN/Inf spelled as strings (sentinel.jsonnum): the detector-input format.
            jsonl.write(jsonnum.dumps({"step": self.step, "loss": loss_v, "grad_norm": grad_norm,
                                       "tokens_per_sec": tps, "time": time.time(),
                                       "node": self.where.node}) + "\n")
        self.step += 1

    def run(self) -> None:
        """Resume, install the handlers, train to --max-steps, evaluate, report the end."""
        args, where = self.args, self.where
        if not args.no_resume:
            self.resume()
        if args.rollback_handler:
            self.handler = RollbackHandler(args.run_dir, self.job, self.store, self.plan,
                                           self.restore, self.reporter,
                                           map_location=self.device, memory=self.ckpt)
            self.handler.install()
        signal.signal(signal.SIGTERM, self.on_sigterm)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.note("start", step=self.step, params=n_params, config=args.config,
                  device=str(self.device), world=where.world, node=where.node)
        if where.rank == 0:
            print(f"{self.job}: {n_params / 1e6:.2f}M parameters on {self.device}, world "
                  f"{where.world}, starting at step {self.step}", flush=True)
        jsonl = open(args.log_jsonl, "a", buffering=1) \
            if args.log_jsonl and where.rank == 0 else None  # noqa: SIM115
        while self.step < args.max_steps:
            self.boundary()
            self.train_step(jsonl)
        if self.ckpt is not None:
            self.ckpt.close()  # the last writes reach the disk before the run ends
            for info, write_s in self.ckpt.drain_saved():
                self.note("checkpoint_written", step=info.step, write_s=write_s)
        if self.offloader is not None:
            self.offloader.wait_idle(OFFLOAD_END_WAIT_S)
            self.offloader.close(OFFLOAD_END_WAIT_S)
        eval_loss = self.evaluate()
        self.note("eval", step=self.step, eval_loss=eval_loss)
        self.note("done", step=self.step)
        # Ended on purpose: no stalled-job alert.
        self.reporter.finish(step=self.step, eval_loss=eval_loss)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.handler is not None:
            self.handler.uninstall()


def main(argv: list[str] | None = None) -> int:
    """Train (or, with --write-data, write the corpus file) and return the exit code."""
    args = _parser().parse_args(argv)
    if args.write_data is not None:
        n = write_data(args.write_data, args.config)
        print(f"wrote {n} bytes of the {args.config} corpus to {args.write_data}")
        return 0
    where = placement()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:  # each rank its own GPU, named in its logs
            device = torch.device("cuda", where.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    if where.world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=where.rank, world_size=where.world)
    Trainer(args, where, device).run()
    if where.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
