"""Record the issue-11 corpus on one GPU: each cause really caused, labelled, split.

    python -m bench.detectors.record_gpu --out "$OUT"          # one H200: ~10 minutes
    python -m bench.detectors.record_gpu --out "$OUT" --only round2    # round 2: 272 s
    python -m bench.detectors.record_gpu --device cpu --smoke --out /tmp/x   # a check
    python -m bench.detectors.merge_gpu "$OUT" bench/detectors/curves/h200    # add to it

One process trains a 25M-parameter byte-level GPT (sentinel.examples.gpt's model, d=512,
8 layers; the old corpus used 3.3M) and writes, per run, ``<out>/traces/<name>.jsonl``:
one file in `sentinel detect FILE`'s format (docs/DETECT-INPUT.md), time-ordered step
records (run, step, rank, node, time, loss, grad_norm, tokens, tokens_per_sec, and
``data_s``, the step's wait for its batch) and node records, one a second, made by the
agent's own code (``sentinel.agent.nodestream``: the disk_stall sampler's worst read
latency and I/Os in flight, the GPU's compute processes and the rank on it, its bad
clock-event reasons), so a trace replays through ``sentinel detect`` as a live run would;
and ``<name>.labels.json`` (format: bench/detectors/corpus.py, plus ``time_events`` for
throughput causes and ``split``). ``<out>/split.json`` says which traces are for tuning
and which are held out: within each family, alternate runs (sorted by name) go to
``tune`` and ``held_out``; a family of one run is held out (:func:`split`, which
bench/detectors/merge_gpu.py applies when new runs join a corpus: the runs already
there keep their part). ``--only`` takes run names and families (``round2``: the runs
added in the corpus's second round). (Recordings made before node records (a separate
``<name>.node.jsonl``) are read by bench/detectors/gputrace.py.)

Loss runs (steps; labels from what was injected, never from a detector):
  healthy at 3 seeds and 2 learning rates; high-LR (8x) at 2 seeds, whose grad-norm
  bursts are healthy; sharp bad batches (random bytes) at 3 steps; subtle bad batches
  (10% of a batch's bytes random: loss about 1.2-1.4x) at 3 steps; a bad batch at step 8
  (before any rolling baseline); ``subtle_small``: bad batches calibrated, each on its
  step, so that the loss really rises 1.2-1.4x (:meth:`Job.calibrate`: forward passes of
  the batch with a share f of its bytes random, no optimizer step, f bisected until
  the loss over the mean of the 16 steps before lands on a target drawn in [1.2, 1.4];
  the labels carry f and the ratios the training step really had).
Throughput runs (time; each cause caused for real during a window of the run):
  ``gpu_contention``: a second process multiplying matrices on the same GPU;
  ``storage_stall``: the job reads each batch with O_DIRECT from a file while reader
  threads flood the same disk with O_DIRECT reads (disk latency rises; the node trace
  shows by how much); ``growing_slowdown``: the dataloader's per-step CPU work grows
  each step until the step time has doubled; ``checkpoint``: a full torch.save of model
  and optimizer every 8 s (single slow steps, not a drop); ``bound_contention``: the
  competitor of ``gpu_contention`` against a GPU-bound job (8x the batch: the model alone
  is launch-bound, and a second process cost it only ~10%). Every cause's label carries
  ``drop``: the job's median step time before the window over the one inside it, less
  one (the contention runs must reach 0.30; a note says when one did not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel import jsonnum

ROOT = Path(__file__).resolve().parents[2]
SUBTLE_FRACTION = 0.10  # share of a subtle bad batch's bytes made random
SPIKE_SPAN = 20  # steps a bad batch may disturb the loss for (as record_real.py)
# subtle_small: the loss ratio a calibrated bad batch aims at (the subtle batches)
SMALL_RATIO = (1.2, 1.4)
SMALL_BASE_STEPS = 16  # the ratio is over the mean loss of this many steps before
SMALL_TOLERANCE = 0.015  # bisection stops this close to the target ratio
SMALL_PROBES = 12  # at most this many forward passes to calibrate one bad batch
BOUND_BATCH_SCALE = 8  # bound_contention: batch 32 -> 256 sequences, the GPU kept busy
MIN_CONTENTION_DROP = 0.30  # a contention run below this cannot be scored (issue 11)
# The second round's runs (`--only round2`): issue-sized subtle batches, GPU-bound
# contention, and a second run of each throughput cause.
ROUND2 = ("subtle_small", "bound_contention", "storage_stall-s1", "growing_slowdown-s1",
          "checkpoint-s1")
CHECKPOINT_EVERY_S = 8.0  # a full save of model and optimizer this often
COMPETITOR = """
import sys, time
dev, start, end, mark = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
big = dev != "cpu"
if big:
    import torch
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm = lambda: a @ a
    sync = torch.cuda.synchronize
else:  # a CPU check: numpy starts in a fraction of torch's time on a loaded VM
    import numpy
    a = numpy.random.default_rng(0).standard_normal((512, 512), dtype=numpy.float32)
    mm = lambda: a @ a
    sync = lambda: None
b = mm()  # warm up (CUDA context, cuBLAS) before the window, not in it
sync()
time.sleep(max(0.0, start - time.time()))
open(mark, "w").write(repr(time.time()))  # when the GPU really became shared
while time.time() < end:
    for _ in range(20):  # queue work back to back: the GPU never waits for this process
        b = mm()
    sync()
"""
# Seconds before its window that the competitor starts (python, torch, CUDA context;
# with --smoke 3 s: python and numpy on a loaded 2-core VM).
COMPETITOR_LEAD_S = 12.0


@dataclass
class Run:
    """One run to record: its family, its knobs, and what it injects."""

    name: str
    family: str
    steps: int = 0  # loss runs: a step count
    seconds: float = 0.0  # throughput runs: a duration
    seed: int = 0
    lr_scale: float = 1.0
    sharp: tuple[int, ...] = ()
    subtle: tuple[int, ...] = ()
    small: tuple[int, ...] = ()  # calibrated bad batches: loss x1.2-1.4 (SMALL_RATIO)
    batch_scale: int = 1  # the batch is this many times the config's
    cause: str = ""  # gpu_contention, storage_stall, growing_slowdown, checkpoint
    window: tuple[float, float] = (0.0, 0.0)  # seconds from the run's start
    notes: list[str] = field(default_factory=list)


def plan(smoke: bool, throughput_s: float = 0.0) -> list[Run]:
    """Return the runs, sized for one H200 (or a seconds-long CPU check).

    ``throughput_s``: the throughput runs' length (0: 45 s, 6 s with ``smoke``; the
    detector needs ~10 s of the run before a cause to know its normal pace).
    """
    n = 30 if smoke else 600
    tp = throughput_s or (6.0 if smoke else 45.0)
    win = (tp / 3, 2 * tp / 3)
    runs = [Run(f"healthy-s{s}-lr{k}", "healthy", steps=n, seed=s, lr_scale=k)
            for s in range(3) for k in (1.0, 2.0) if not (smoke and s > 0)]
    runs += [Run(f"high_lr-s{s}", "high_lr", steps=n, seed=s, lr_scale=8.0)
             for s in range(1 if smoke else 2)]
    spikes = (int(n * 0.4), int(n * 0.6), int(n * 0.8))
    runs += [Run(f"sharp-s{s}", "sharp_spike", steps=n, seed=10 + s, sharp=spikes)
             for s in range(1 if smoke else 2)]
    runs += [Run(f"subtle-s{s}", "subtle_spike", steps=n, seed=20 + s, subtle=spikes)
             for s in range(1 if smoke else 2)]
    runs += [Run("early-s0", "early_spike", steps=n // 3, seed=30, sharp=(8,))]
    runs += [Run(f"{c}-s0", c, seconds=tp, seed=40 + i, cause=c, window=win)
             for i, c in enumerate(("gpu_contention", "storage_stall", "growing_slowdown",
                                    "checkpoint"))]
    # Round 2: five calibrated bad batches a run, 90 steps apart (the smoke run's 4-5).
    small = tuple(int(n * f) for f in (0.25, 0.4, 0.55, 0.7, 0.85))
    runs += [Run(f"subtle_small-s{s}", "subtle_small", steps=n, seed=60 + s, small=small)
             for s in range(2)]
    runs += [Run(f"bound_contention-s{s}", "bound_contention", seconds=tp, seed=70 + s,
                 cause="gpu_contention", window=win, batch_scale=BOUND_BATCH_SCALE)
             for s in range(2)]
    runs += [Run(f"{c}-s1", c, seconds=tp, seed=50 + i, cause=c, window=win)
             for i, c in enumerate(("storage_stall", "growing_slowdown", "checkpoint"))]
    return runs


def select(runs: list[Run], only: str) -> list[Run]:
    """Return the runs ``only`` names (comma-separated run names, families, ``round2``).

    Empty: every run. An unknown name is an error that lists the valid ones.
    """
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    if not wanted:
        return runs
    if "round2" in wanted:
        wanted = (wanted - {"round2"}) | set(ROUND2)
    valid = {r.name for r in runs} | {r.family for r in runs}
    unknown = sorted(wanted - valid)
    if unknown:
        raise ValueError(f"--only: unknown {', '.join(unknown)} (valid: round2, "
                         f"{', '.join(sorted(valid))})")
    return [r for r in runs if r.name in wanted or r.family in wanted]


class DiskFlood:
    """Threads issuing O_DIRECT reads of random blocks of a file: the disk gets busy."""

    def __init__(self, path: Path, threads: int = 16) -> None:
        self.path, self.threads = path, threads
        self.stop = threading.Event()
        self.workers: list[threading.Thread] = []

    def _read(self, seed: int) -> None:
        import mmap
        rng = random.Random(seed)
        size = self.path.stat().st_size
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            fd = os.open(self.path, os.O_RDONLY)  # tmpfs and the like: no O_DIRECT
        buf = mmap.mmap(-1, 1 << 20)
        try:
            while not self.stop.is_set():
                off = rng.randrange(0, max(1, size - (1 << 20))) // 4096 * 4096
                os.preadv(fd, [buf], off)
        finally:
            os.close(fd)

    def __enter__(self) -> DiskFlood:
        self.workers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                        for i in range(self.threads)]
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(timeout=5)


class NodeWatch:
    """What the node saw each second, recorded by the agent's own code.

    The agent's ``disk_stall`` sampler and NVML fields (``GpuCollector.quick``) feed its
    ``NodeSampler``; :meth:`records` turns the samples into detector-input node records
    exactly as the agent's ``/api/v1/node`` does: the trainer's GPU, its one rank, the
    bad clock-event reasons. One source for each signal, live and recorded.
    """

    def __init__(self, device: str) -> None:
        from sentinel.agent.collectors.base import Context
        from sentinel.agent.collectors.disk_stall import DiskStallCollector
        from sentinel.agent.collectors.gpu import GpuCollector
        from sentinel.agent.config import AgentConfig
        from sentinel.agent.nodestream import NodeRing, NodeSampler
        ctx = Context(config=AgentConfig())
        self.host = socket.gethostname()
        self.disk = DiskStallCollector(ctx)
        self.gpu = GpuCollector(ctx) if device.startswith("cuda") else None
        self.index = int(device.split(":")[1]) if ":" in device else 0
        self.ring = NodeRing()
        self.sampler = NodeSampler(self.ring, disk=self.disk.latest,
                                   gpus=self.gpu.quick if self.gpu is not None else None,
                                   active=lambda: True)

    def _uuid(self) -> str | None:
        """Return the trainer's GPU UUID (CUDA's numbering need not be NVML's)."""
        try:
            import torch
            uuid = str(torch.cuda.get_device_properties(self.index).uuid)
        except Exception:  # noqa: BLE001 - no CUDA: the GPU by NVML's index, if any
            return self.sampler.uuids.get(self.index)
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"

    def records(self, run: str) -> list[dict[str, Any]]:
        """Return the node records of the run (``run`` named on each), oldest first."""
        from sentinel.agent.nodestream import node_records
        uuid = self._uuid() if self.gpu is not None else None
        mine = {uuid} if uuid else set()
        recs = node_records(self.ring.since(0.0), self.sampler.uuids, self.host, mine,
                            dict.fromkeys(mine, 1))
        return [{"run": run, **r} for r in recs]

    def __enter__(self) -> NodeWatch:
        self.disk.start()
        if self.gpu is not None:
            self.gpu.start()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.close()
        self.disk.close()
        if self.gpu is not None:
            self.gpu.close()


class Job:
    """The model, its optimizer and its data, and one training step at a time."""

    def __init__(self, run: Run, args: argparse.Namespace, corpus: bytes) -> None:
        import torch

        from sentinel.examples.gpt import GPT, ModelConfig
        self.torch, self.args, self.run = torch, args, run
        cfg = (ModelConfig(64, 2, 4, 64, 8, 3e-3, 10, 0) if args.smoke
               else ModelConfig(512, 8, 8, 256, 32, 6e-4, 50, 0))
        self.cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * run.batch_scale)
        torch.manual_seed(run.seed)
        self.rng = random.Random(run.seed)
        self.model = GPT(self.cfg).to(args.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr * run.lr_scale,
                                     weight_decay=0.1)
        self.corpus = corpus
        self.direct: Any = None
        self.step = 0
        self.losses: list[float] = []  # every step's loss and grad norm so far
        self.grad_norms: list[float] = []
        self.injected: dict[int, dict[str, Any]] = {}  # subtle_small: step -> what was done

    def lr(self) -> float:
        base = self.cfg.lr * self.run.lr_scale
        return base * min(1.0, (self.step + 1) / self.cfg.warmup_steps)

    def batch(self, extra_cost: int) -> Any:
        """Return the next batch (and spend ``extra_cost`` units of dataloader CPU)."""
        torch, cfg = self.torch, self.cfg
        span = cfg.seq_len + 1
        if extra_cost:  # a dataloader whose per-step work grows: real CPU, not a sleep
            acc = 0
            for i in range(extra_cost):
                acc = (acc * 31 + i) % 1_000_003
        rows = []
        for _ in range(cfg.batch_size):
            off = self.rng.randrange(0, len(self.corpus) - span)
            rows.append(self.direct.read(off, span) if self.direct is not None
                        else self.corpus[off:off + span])
        # One buffer for the batch (a list of lists costs ~10 ms at 256 sequences).
        x = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(
            cfg.batch_size, span).long()
        if self.step in self.run.sharp:
            x = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(self.step))
        elif self.step in self.run.subtle:
            g = torch.Generator().manual_seed(self.step)
            mask = torch.rand(x.shape, generator=g) < SUBTLE_FRACTION
            x = torch.where(mask, torch.randint(0, 256, x.shape, generator=g), x)
        return x.to(self.args.device, non_blocking=True)

    def calibrate(self, x: Any) -> Any:
        """Return batch ``x`` with a share of its bytes random, chosen so that the loss
        rises by a ratio drawn in SMALL_RATIO over the mean of the steps before.

        Forward passes only (no gradient, no optimizer step: the model is the one the
        training step then uses, so the step's loss is the probe's). The share f is
        bisected on one fixed draw of positions and bytes, so a larger f corrupts a
        superset of the bytes. What was chosen goes to ``injected``; :meth:`train` adds
        the ratios the step really had.
        """
        torch = self.torch
        g = torch.Generator().manual_seed(self.run.seed * 100_003 + self.step)
        u = torch.rand(x.shape, generator=g).to(x.device)
        noise = torch.randint(0, 256, x.shape, generator=g).to(x.device)
        base = sum(self.losses[-SMALL_BASE_STEPS:]) / max(1, len(self.losses[-SMALL_BASE_STEPS:]))
        target = self.rng.uniform(*SMALL_RATIO)

        def ratio(f: float) -> float:
            with torch.no_grad():
                return float(batch_loss(self.model, torch.where(u < f, noise, x),
                                        self.args.device)) / base

        lo, hi, f, r = 0.0, 1.0, 0.0, ratio(0.0)
        probes = 1
        while abs(r - target) > SMALL_TOLERANCE and probes < SMALL_PROBES:
            f = (lo + hi) / 2
            r = ratio(f)
            probes += 1
            lo, hi = (f, hi) if r < target else (lo, f)
        self.injected[self.step] = {"fraction": round(f, 5), "target_ratio": round(target, 4),
                                    "probe_ratio": round(r, 4), "probes": probes}
        return torch.where(u < f, noise, x)

    def train(self, x: Any) -> tuple[float, float]:
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        loss, gn = loss_and_grad(self.model, self.opt, x, self.args.device)
        self.opt.step()
        inj = self.injected.get(self.step)
        if inj is not None:  # what the bad batch really did, against the steps before
            before = self.losses[-SMALL_BASE_STEPS:]
            inj["loss_ratio"] = round(loss / (sum(before) / max(1, len(before))), 4)
            if self.grad_norms:
                inj["grad_norm_ratio"] = round(gn / _median(self.grad_norms[-32:]), 4)
        self.losses.append(loss)
        self.grad_norms.append(gn)
        return loss, gn


def batch_loss(model: Any, x: Any, device: str) -> Any:
    """Return the next-byte cross-entropy of batch ``x`` (a tensor; bf16 autocast on CUDA)."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype == torch.bfloat16):
        logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())


def loss_and_grad(model: Any, opt: Any, x: Any, device: str) -> tuple[float, float]:
    """Return the loss and grad norm (before clipping to 1) of batch ``x``; gradients set.

    bf16 autocast on CUDA; the optimizer's step is the caller's.
    """
    import torch

    loss = batch_loss(model, x, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    return float(loss.detach()), gn


def record(run: Run, args: argparse.Namespace, corpus: bytes, out: Path) -> dict[str, Any]:
    """Train one run, causing its cause in its window; write its trace (steps and node
    records)."""
    job = Job(run, args, corpus)
    host = socket.gethostname()
    lines: list[tuple[float, str]] = []  # (time, line): steps now, node records at the end
    data_file = out / "work" / "corpus.bin"
    watch = NodeWatch(args.device)
    t0 = time.time()
    competitor: subprocess.Popen[bytes] | None = None
    flood: DiskFlood | None = None
    if run.cause == "storage_stall":
        from sentinel.examples.gpt import DirectReader
        try:
            job.direct = DirectReader(data_file)
        except SystemExit as e:  # no O_DIRECT on this filesystem: say so, read normally
            run.notes.append(f"job reads without O_DIRECT: {e}")
    a, b = (t0 + run.window[0], t0 + run.window[1]) if run.cause else (0.0, 0.0)
    if run.cause == "gpu_contention":
        # Started before its window so that its start-up is not part of it; the run's
        # window must leave it the time (the competitor itself waits for ``a``).
        a = max(a, t0 + (3.0 if args.smoke else COMPETITOR_LEAD_S))
        b = max(b, a + (run.window[1] - run.window[0]))
    mark = out / "work" / "competitor.start"
    durations: list[float] = []
    loop_per_s = _loop_rate() if run.cause == "growing_slowdown" else 0.0
    saved = t0
    with watch:
        last = time.time()
        while (job.step < run.steps) if run.steps else (time.time() - t0 < run.seconds):
            now = time.time()
            if run.cause == "gpu_contention" and competitor is None:
                mark.unlink(missing_ok=True)
                competitor = subprocess.Popen(
                    [sys.executable, "-c", COMPETITOR, args.device, repr(a), repr(b),
                     str(mark)])
            if run.cause == "storage_stall" and flood is None and now >= a:
                flood = DiskFlood(data_file).__enter__()
            if flood is not None and now >= b and not flood.stop.is_set():
                flood.__exit__()
            grow = 0
            if run.cause == "growing_slowdown" and a <= now < b:
                # Each step's input costs more than the last: the step time doubles by
                # the window's end (the usual step time measured before it).
                base = _median(durations) if durations else 0.0
                grow = int(loop_per_s * base * (now - a) / (b - a))
            t_data = time.perf_counter()
            x = job.batch(grow)
            data_s = time.perf_counter() - t_data
            if job.step in run.small:  # after the wait is timed: not the dataloader's
                x = job.calibrate(x)
            loss, gn = job.train(x)  # float() syncs: the step is done
            if run.cause == "checkpoint" and time.time() - saved >= CHECKPOINT_EVERY_S:
                job.torch.save({"model": job.model.state_dict(), "opt": job.opt.state_dict()},
                               out / "work" / "ckpt.pt")
                saved = time.time()
            t = time.time()
            if not run.cause or t < a:
                durations.append(t - last)
                del durations[:-200]
            tokens = job.cfg.batch_size * job.cfg.seq_len
            lines.append((t, jsonnum.dumps({
                "run": run.name, "step": job.step, "rank": 0, "node": host, "time": t,
                "loss": loss, "grad_norm": gn, "tokens": tokens,
                "tokens_per_sec": tokens / max(t - last, 1e-9), "data_s": data_s})))
            last = t
            job.step += 1
    if flood is not None:
        flood.__exit__()
    if competitor is not None:
        competitor.wait(timeout=60)
        try:  # the label starts when the GPU was really shared, not when asked to be
            a = float(mark.read_text())
        except (OSError, ValueError):
            run.notes.append(f"competitor never started computing (exit {competitor.returncode})")
            a = b
        if a > b:  # its start-up outlasted its window (a loaded machine): no window
            run.notes.append(f"competitor started computing {a - b:.1f} s after its window")
            a = b
    drop = (_drop([t for t, _line in lines], a, b)
            if run.cause and run.cause != "checkpoint" else None)
    if run.cause == "gpu_contention" and drop is not None and drop < MIN_CONTENTION_DROP:
        run.notes.append(f"the competitor cost the job {drop:.0%} of its steps/s, under "
                         f"{MIN_CONTENTION_DROP:.0%}: no drop to score")
    lines += [(r["time"], jsonnum.dumps(r)) for r in watch.records(run.name)]
    # One file in time order, steps and node records: what `sentinel detect FILE` reads.
    (out / "traces" / f"{run.name}.jsonl").write_text(
        "".join(line + "\n" for _t, line in sorted(lines, key=lambda x: x[0])))
    return {"params": job.params, "steps": job.step, "seconds": time.time() - t0,
            "window": [a, b] if run.cause else None, "drop": drop,
            "batch_size": job.cfg.batch_size, "injected": job.injected}


def _drop(times: list[float], a: float, b: float) -> float | None:
    """Return 1 - (median step time before ``a``) / (median step time in [a, b)).

    The steps of the run's first 3 s (CUDA start-up, autotuning) are left out; None when
    either side has under 5 steps.
    """
    dts = [(t, t - s) for s, t in zip(times, times[1:], strict=False)]
    before = [dt for t, dt in dts if times[0] + 3.0 <= t < a]
    during = [dt for t, dt in dts if a <= t < b]
    if len(before) < 5 or len(during) < 5:
        return None
    return round(1.0 - _median(before) / _median(during), 4)


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2]


def _loop_rate() -> float:
    """Return how many iterations of the dataloader's extra work run per second."""
    t = time.perf_counter()
    acc = 0
    for i in range(200_000):
        acc = (acc * 31 + i) % 1_000_003
    return 200_000 / (time.perf_counter() - t)


def labels(run: Run, info: dict[str, Any]) -> dict[str, Any]:
    """Return the run's labels: events from what was injected, never from a detector."""
    events = [{"start": s, "end": s + SPIKE_SPAN, "kind": "spike",
               **info.get("injected", {}).get(s, {})}
              for s in sorted((*run.sharp, *run.subtle, *run.small))]
    time_events = []
    if run.cause and run.cause != "checkpoint":
        a, b = info["window"]
        time_events.append({"start_time": a, "end_time": b, "cause": run.cause,
                            "worsening": run.cause == "growing_slowdown",
                            "drop": info.get("drop")})
    out = {"healthy": not events and not time_events, "family": f"gpu_{run.family}",
           "events": events, "time_events": time_events, "seed": run.seed,
           "lr_scale": run.lr_scale, "params": info["params"], "steps": info["steps"],
           "seconds": round(info["seconds"], 1), "notes": run.notes}
    if run.batch_scale != 1:
        out["batch_size"] = info["batch_size"]
    return out


def split(names_by_family: dict[str, list[str]],
          keep: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Return each run's part: ``tune`` (thresholds may look at it) or ``held_out``.

    A run in ``keep`` (name -> part: a corpus's existing split) keeps its part. Each
    other run, in name order, joins the part with fewer runs of its family so far, tune
    on a tie: a new family alternates tune, held_out, ...; a second run of a family
    whose one run is held out is tuned on. A family of one run is held out.
    """
    keep = keep or {}
    out: dict[str, list[str]] = {"tune": [], "held_out": []}
    for _fam, names in sorted(names_by_family.items()):
        names = sorted(names)
        if len(names) == 1 and names[0] not in keep:
            out["held_out"] += names
            continue
        count = {"tune": 0, "held_out": 0}
        for n in names:
            if n in keep:
                count[keep[n]] += 1
        for n in names:
            part = keep.get(n) or ("tune" if count["tune"] <= count["held_out"]
                                   else "held_out")
            if n not in keep:
                count[part] += 1
            out[part].append(n)
    return {k: sorted(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, seconds per run")
    ap.add_argument("--budget-s", type=float, default=500.0,
                    help="stop starting runs past this many seconds (the rest are listed)")
    ap.add_argument("--only", default="",
                    help="comma-separated run names and families; round2: the second "
                         "round's runs (default: all)")
    ap.add_argument("--throughput-s", type=float, default=0.0,
                    help="seconds per throughput run (default 45, 6 with --smoke: too short "
                         "for a drop to be found; 40 makes a CPU corpus the detector can use)")
    args = ap.parse_args(argv)
    try:
        runs = select(plan(args.smoke, args.throughput_s), args.only)
    except ValueError as e:
        ap.error(str(e))
    from sentinel.examples.gpt import load_corpus
    out = Path(args.out)
    for d in ("traces", "work"):
        (out / d).mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(1 << 22 if args.smoke else 32 << 20)
    # The storage run's file: large enough that the flood's reads miss the page cache.
    with (out / "work" / "corpus.bin").open("wb") as fh:
        for _ in range(2 if args.smoke else 32):
            fh.write(corpus)
    start = time.time()
    done: dict[str, list[str]] = {}
    skipped = []
    for run in runs:
        if time.time() - start > args.budget_s:
            skipped.append(run.name)
            continue
        info = record(run, args, corpus, out)
        lab = labels(run, info)
        (out / "traces" / f"{run.name}.labels.json").write_text(json.dumps(lab, indent=1))
        done.setdefault(run.family, []).append(run.name)
        extra = "".join(f"; step {k}: f {v['fraction']}, loss x{v.get('loss_ratio')}, "
                        f"grad norm x{v.get('grad_norm_ratio')}"
                        for k, v in sorted(info["injected"].items()))
        if info["drop"] is not None:
            extra += f"; steps/s -{info['drop']:.0%} in the window"
        print(f"record_gpu: {run.name}: {info['steps']} steps in {info['seconds']:.1f} s "
              f"({info['params'] / 1e6:.1f}M params, batch {info['batch_size']}){extra}"
              f"{''.join('; NOTE ' + n for n in run.notes)}", flush=True)
    parts = split(done)
    for part, names in parts.items():
        for n in names:
            p = out / "traces" / f"{n}.labels.json"
            lab = json.loads(p.read_text())
            lab["split"] = part
            p.write_text(json.dumps(lab, indent=1))
    (out / "split.json").write_text(json.dumps({**parts, "skipped": skipped}, indent=1))
    for f in (out / "work").iterdir():
        f.unlink()
    (out / "work").rmdir()
    print(f"record_gpu: {sum(map(len, done.values()))} runs in {time.time() - start:.0f} s; "
          f"skipped {skipped or 'none'}; traces in {out / 'traces'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
