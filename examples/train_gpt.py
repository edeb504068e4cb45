#!/usr/bin/env python3
"""Train a small GPT on the Python standard library's source bytes, with sentinel.train.

A real decoder-only transformer (byte-level, vocabulary 256) trained on a real corpus
that is on every machine with Python: the standard library's ``.py`` files, read in a
fixed order. bf16 autocast on CUDA when present, fp32 on CPU otherwise.

What it shows:
- ``Reporter`` every step (loss, grad norm, tokens, the global batch index);
- ``CheckpointStore`` every ``--checkpoint-every`` steps, resuming from the newest
  verified checkpoint at start (so a Slurm ``--requeue`` continues the run);
- the resumable data position plus ``SkipPlan``: the batch for global index ``i`` is a
  pure function of ``i``, so skipping ranges and resuming are exact;
- the rollback handler (on by default): ``sentinel rollback`` makes the job reload a
  checkpoint in-process and skip batches;
- ``--inject-bad-batch I[,J...]`` replaces global batches I, J with corrupted data
  (random bytes) that spikes the loss and knocks the model off its trend.

Runs single-process, or distributed when started with RANK/WORLD_SIZE/MASTER_ADDR/
MASTER_PORT in the environment (torchrun or by hand): gloo on CPU, NCCL on CUDA.

Logs: ``--log-jsonl`` writes the detector-input format (step, loss, grad_norm,
tokens_per_sec, time, node); ``RUN_DIR/log/rank{R}.jsonl`` records every step's global
batch index, skipped batches, checkpoints, evaluations, resumes and rollbacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from sentinel import jsonnum  # noqa: E402
from sentinel.train import (  # noqa: E402
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
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


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
        return self.head(self.ln_f(x))


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


def parse_steps(text: str) -> set[int]:
    try:
        vals = {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise SystemExit(f"--inject-bad-batch {text!r}: expected I[,J...] batch indices") from None
    if any(v < 0 for v in vals):
        raise SystemExit(f"--inject-bad-batch {text!r}: batch indices must be >= 0")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/gpt"))
    ap.add_argument("--job", default=None, help="job name (default gpt-CONFIG)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--keep", type=int, default=3, help="newest checkpoints kept")
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
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config]
    lr = args.lr if args.lr is not None else cfg.lr
    job = args.job or f"gpt-{args.config}"

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir: Path = args.run_dir
    log_dir = run_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    batch_log = open(log_dir / f"rank{rank}.jsonl", "a", buffering=1)  # noqa: SIM115
    pid = os.getpid()

    def note(kind: str, **fields: Any) -> None:
        rec = {"event": kind, "time": time.time(), "pid": pid, **fields}
        batch_log.write(json.dumps(rec) + "\n")

    # Data: non-overlapping windows of seq_len+1 bytes; the last VAL_FRACTION held out.
    corpus = torch.frombuffer(bytearray(load_corpus(cfg.corpus_bytes)), dtype=torch.uint8)
    n_val = int(len(corpus) * VAL_FRACTION)
    train, val = corpus[:-n_val].to(device), corpus[-n_val:].to(device)
    span = cfg.seq_len + 1
    n_windows = (len(train) - 1) // cfg.seq_len
    sampler = EpochShuffleSampler(n_windows, cfg.batch_size, seed=args.seed, rank=rank,
                                  world_size=world)
    offsets = torch.arange(span, device=device)

    def make_batch(i: int) -> torch.Tensor:
        starts = torch.tensor(sampler(i), device=device) * cfg.seq_len
        return train[starts[:, None] + offsets].long()

    val_starts = torch.arange(0, len(val) - span, cfg.seq_len, device=device)
    val_batches = [val[val_starts[k::EVAL_BATCHES][: cfg.batch_size, None] + offsets].long()
                   for k in range(EVAL_BATCHES)]

    torch.manual_seed(args.seed)
    model: nn.Module = GPT(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        frac = min(1.0, (s - cfg.warmup_steps) / max(1, args.max_steps - cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model)

    store = CheckpointStore(run_dir / "checkpoints", keep=args.keep, writer=rank == 0)
    plan = SkipPlan(run_dir)
    batches = ResumableBatches(make_batch, skip_plan=plan,
                               samples_per_batch=cfg.batch_size // world,
                               on_skip=lambda i: note("skip", batch=i))
    step = 0
    checkpointed = -1  # step of the checkpoint the model state equals (no need to save it)

    def restore(state: dict[str, Any]) -> None:
        nonlocal step, checkpointed
        batches.seek(restore_training_state(state, model, opt, sched))
        step = checkpointed = int(state["extra"]["step"])

    reporter = Reporter(job, rank=rank)
    if not args.no_resume:
        t0 = time.perf_counter()
        if args.resume_from is not None:
            try:
                info = store.info(args.resume_from)
                got = (info, store.load(args.resume_from, map_location=device)) if info else None
            except CheckpointError as e:
                raise SystemExit(f"--resume-from {args.resume_from}: {e}") from None
            if got is None:
                raise SystemExit(f"--resume-from {args.resume_from}: no such checkpoint")
        else:
            got = store.load_latest(map_location=device)
        if got is not None:
            restore(got[1])
            note("resume", step=step, checkpoint=got[0].step, load_s=time.perf_counter() - t0,
                 batch=batches.position.batch_index)
            reporter.event("resumed", step=step, load_s=time.perf_counter() - t0)
    handler = None
    if args.rollback_handler:
        handler = RollbackHandler(run_dir, job, store, plan, restore, reporter,
                                  map_location=device)
        handler.install()
    note("start", step=step, params=n_params, config=args.config, device=str(device), world=world)
    if rank == 0:
        print(f"{job}: {n_params / 1e6:.2f}M parameters on {device}, world {world}, "
              f"starting at step {step}", flush=True)

    jsonl = open(args.log_jsonl, "a", buffering=1) if args.log_jsonl and rank == 0 else None  # noqa: SIM115
    node = socket.gethostname()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), autocast:
            losses = [F.cross_entropy(model(b[:, :-1]).float().flatten(0, 1), b[:, 1:].flatten())
                      for b in val_batches]
        model.train()
        return float(torch.stack(losses).mean())

    while step < args.max_steps:
        if handler is not None:
            out = handler.at_step_boundary(step)
            if out is not None:
                note("rollback", from_step=out.from_step, to_step=out.to_step,
                     request=out.request.id, read_s=out.read_s, restore_s=out.restore_s,
                     total_s=out.total_s, batch=batches.position.batch_index)
        if step % args.checkpoint_every == 0 and step != checkpointed:
            t0 = time.perf_counter()
            if rank == 0:
                store.save(step, training_state(model, opt, sched, batches.position,
                                                {"step": step, "config": args.config}))
            checkpointed = step
            save_s = time.perf_counter() - t0
            note("checkpoint", step=step, save_s=save_s)
            reporter.event("checkpoint_saved", step=step, seconds=save_s)
        if step % args.eval_every == 0:
            note("eval", step=step, eval_loss=evaluate())
        t_step = time.perf_counter()
        b = next(batches)
        x = b.data
        if b.index in args.inject_bad_batch:
            x = bad_batch(x, args.seed, b.index)
            note("inject", step=step, batch=b.index)
        with autocast:
            logits = train_model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        sched.step()
        loss_v = float(loss.detach())  # syncs the GPU: the step is done
        dt = time.perf_counter() - t_step
        if args.min_step_seconds > dt:
            time.sleep(args.min_step_seconds - dt)
            dt = args.min_step_seconds
        tps = tokens_per_step / dt
        reporter.step(step, loss=loss_v, tokens=tokens_per_step // world, grad_norm=grad_norm,
                      samples=cfg.batch_size // world, batch=b.index, lr=sched.get_last_lr()[0])
        note("step", step=step, batch=b.index, loss=loss_v, grad_norm=grad_norm,
             tokens_per_sec=tps, step_s=dt)
        if jsonl is not None:
            # NaN/Inf spelled as strings (sentinel.jsonnum): the detector-input format.
            jsonl.write(jsonnum.dumps({"step": step, "loss": loss_v, "grad_norm": grad_norm,
                                       "tokens_per_sec": tps, "time": time.time(),
                                       "node": node}) + "\n")
        step += 1
    eval_loss = evaluate()
    note("eval", step=step, eval_loss=eval_loss)
    note("done", step=step)
    reporter.finish(step=step, eval_loss=eval_loss)  # ended on purpose: no stalled-job alert
    if handler is not None:
        handler.uninstall()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
