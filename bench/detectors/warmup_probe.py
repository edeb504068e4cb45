"""Measure what a bad batch and a learning-rate transient look like in a run's first steps.

    python -m bench.detectors.warmup_probe --config small --lr 0.02 --seeds 1-7 --out OUT
    python -m bench.detectors.warmup_probe --config h200 --seeds 31 --steps 20 --out OUT

At every step of a short run it first takes, with that step's weights and no update, the
loss and grad norm of a batch of uniformly random bytes (what a bad batch at that step
would report), then trains the step on real data. ``small`` is the H100 corpus's model
and optimizer (examples/train_gpt.py; ``--lr 0.02`` is its high-LR run), ``h200`` the
H200 corpus's (bench/detectors/record_gpu.py's Job, its own model, data and AdamW;
``--smoke``: its toy size), ``tiny`` a seconds-long check. Writes
``<out>/<config>-lr<lr>-s<seed>.jsonl`` (step, loss, grad_norm, bad_loss, bad_grad_norm)
and prints, per run, each step's ratios: the loss over the previous step's and the grad
norm over the median of the run's grad norms so far, for the real batch and the random.
The loss-spike detector's warm-up rules rest on these figures (docs/DESIGN.md, "Loss
spikes in a run's first steps"; tests/fixtures/warmup_probe/ holds the runs measured).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

WARMUP_JUMP = math.exp(0.3)  # loss_spike.Params.warmup_jump, as a ratio (+35%)


class Trainer:
    """One short run: its model, optimizer and batches, and what a random batch costs."""

    def __init__(self, config: str, lr: float | None, seed: int, device: str,
                 smoke: bool = False) -> None:
        import torch

        self.torch, self.device = torch, device
        if config == "h200":
            from bench.detectors.record_gpu import Job, Run
            from sentinel.examples.gpt import load_corpus
            run = Run("probe", "healthy", steps=1, seed=seed)
            self.job = Job(run, argparse.Namespace(smoke=smoke, device=device),
                           load_corpus(1 << 22 if smoke else 32 << 20))
            self.cfg, self.model, self.opt = self.job.cfg, self.job.model, self.job.opt
            self.peak = lr if lr is not None else self.cfg.lr
        else:
            from sentinel.examples.gpt import CONFIGS, GPT, load_corpus
            self.job = None
            self.cfg = CONFIGS[config]
            torch.manual_seed(seed)
            self.model = GPT(self.cfg).to(device)
            self.peak = lr if lr is not None else self.cfg.lr
            # examples/train_gpt.py's optimizer
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.peak,
                                         betas=(0.9, 0.95), weight_decay=0.1)
            self.corpus = load_corpus(self.cfg.corpus_bytes)
            self.rng = random.Random(seed)
        self.noise = torch.Generator().manual_seed(1_000 + seed)

    def batch(self) -> Any:
        """Return the next real batch."""
        if self.job is not None:
            return self.job.batch(0)
        span = self.cfg.seq_len + 1
        rows = [self.corpus[o:o + span] for o in
                (self.rng.randrange(0, len(self.corpus) - span)
                 for _ in range(self.cfg.batch_size))]
        return self.torch.tensor([list(r) for r in rows], dtype=self.torch.long).to(self.device)

    def random_batch(self) -> Any:
        """Return a batch of uniformly random bytes (record_gpu's sharp bad batch)."""
        shape = (self.cfg.batch_size, self.cfg.seq_len + 1)
        return self.torch.randint(0, 256, shape, generator=self.noise).to(self.device)

    def measure(self, x: Any) -> tuple[float, float]:
        """Return the loss and grad norm (before clipping) of ``x``; gradients left set."""
        from bench.detectors.record_gpu import loss_and_grad

        return loss_and_grad(self.model, self.opt, x, self.device)

    def step(self, s: int) -> dict[str, float]:
        """Measure a random batch at step ``s``, then train the step on a real one."""
        bad_loss, bad_gn = self.measure(self.random_batch())
        for g in self.opt.param_groups:
            g["lr"] = self.peak * min(1.0, (s + 1) / self.cfg.warmup_steps)
        loss, gn = self.measure(self.batch())
        self.opt.step()
        return {"step": s, "loss": loss, "grad_norm": gn, "bad_loss": bad_loss,
                "bad_grad_norm": bad_gn}


def ratios(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Return per step (from the second) the loss and grad-norm ratios the warm-up rule sees.

    The loss over the previous step's, the grad norm over the median of the run's grad
    norms before the step; for the real batch and for the random one.
    """
    out = []
    for i in range(1, len(rows)):
        prev, level = rows[i - 1]["loss"], statistics.median(r["grad_norm"] for r in rows[:i])
        r = rows[i]
        out.append({"step": r["step"], "loss_x": r["loss"] / prev,
                    "grad_x": r["grad_norm"] / level, "bad_loss_x": r["bad_loss"] / prev,
                    "bad_grad_x": r["bad_grad_norm"] / level})
    return out


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="small", choices=["tiny", "small", "h200"])
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default: the config's)")
    ap.add_argument("--seeds", default="1", help="a seed or a range, as 1-7")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true",
                    help="h200 only: record_gpu's toy-size model (a seconds-long check)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    import torch
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in _seeds(args.seeds):
        tr = Trainer(args.config, args.lr, seed, args.device, args.smoke)
        rows = [tr.step(s) for s in range(args.steps)]
        name = f"{args.config}-lr{tr.peak:g}-s{seed}"
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: step loss_x grad_x | random batch: loss_x grad_x "
              f"(* loss_x >= {WARMUP_JUMP:.2f})")
        for q in ratios(rows):
            mark = "*" if q["loss_x"] >= WARMUP_JUMP else " "
            print(f"  {q['step']:3d} {q['loss_x']:5.2f}{mark} {q['grad_x']:6.2f} | "
                  f"{q['bad_loss_x']:5.2f} {q['bad_grad_x']:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
