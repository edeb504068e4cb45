"""Measure burn-in v2 (issue 16) on a GPU machine: everything docs/BENCHMARKS.md reports.

One run, in this order (the budget drops the later sections if time runs short; the
interconnect section runs second, so on two GPUs it is never the one dropped):

1. verdict time before/after: v1's settings (memory test first, fixed 5 s warm-up,
   30 s measured, no interconnect) against v2's defaults, alternated --rounds times,
   with each run's phases (set-up, memory test, warm-up, measured, interconnect);
2. speed: sentinel's measured TFLOPS against a plain ``a @ b`` torch loop on GPU 0,
   alternated --rounds times; the ratio of the medians;
3. competitor: a second process running matmuls on GPU 0 during a default burn-in of
   every GPU: GPU 0 LOW_FLOPS (named); on two GPUs also judged with no floor, so only
   the comparison with the node's best GPU can flag it;
4. faults: a default burn-in of GPU 0 with a bad element in every result and one
   flipped memory bit: WRONG_RESULTS and MEMORY_ERRORS in the shorter run;
5. nearly full: another process holds all but --leave-gib GiB of GPU 0; a short
   burn-in's memory test must stay within what is free;
6. interconnect (two or more GPUs): --rounds standalone measurements of the copies
   between every ordered pair and of the NCCL all-reduce (bus bandwidth as nccl-tests);
   on one GPU the default run's note that the check needs two.

Writes $OUT (or --out, default ./out): burnin_v2.json (everything, written after each
section), burnin_v2_summary.txt, reports/<name>.json (each burn-in report) and
floors_measured.json (the figures scripts/update_burnin_floors.py turns into floors).

    NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD python bench/burnin_v2_gpu.py --out "$OUT"
    python bench/burnin_v2_gpu.py --hog 0 --seconds 60     # the competing process
    python bench/burnin_v2_gpu.py --fill 0 --leave-gib 4   # hold all but 4 GiB
    python bench/burnin_v2_gpu.py --cpu-dry-run --out /tmp/dry  # no GPU: the plumbing
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # the device machines' admins require it

N = 8192
GIB = 1 << 30


# ---- helper processes ----

def hog(gpu: int, seconds: float) -> None:
    """Run back-to-back bf16 matmuls on ``gpu`` for ``seconds`` (the competing process)."""
    import torch

    dev = torch.device("cuda", gpu)
    a = torch.randn(N, N, device=dev, dtype=torch.bfloat16)
    b = torch.randn(N, N, device=dev, dtype=torch.bfloat16)
    c = torch.empty_like(a)
    torch.matmul(a, b, out=c)
    torch.cuda.synchronize(dev)
    print("ready hog", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(50):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize(dev)


def fill(gpu: int, leave_gib: float, seconds: float) -> None:
    """Hold all but ``leave_gib`` GiB of ``gpu``'s free memory for ``seconds`` (another tenant)."""
    import torch

    dev = torch.device("cuda", gpu)
    torch.cuda.set_device(dev)
    held = []
    while True:
        free = torch.cuda.mem_get_info(dev)[0]
        take = free - int(leave_gib * GIB)
        if take < (64 << 20):
            break
        held.append(torch.empty(min(take, 4 * GIB), dtype=torch.uint8, device=dev))
    free = torch.cuda.mem_get_info(dev)[0]
    print(f"ready fill held={sum(t.numel() for t in held)} free={free}", flush=True)
    time.sleep(seconds)


@contextlib.contextmanager
def helper(args: list[str], dry: bool) -> Iterator[str]:
    """Run this script as a helper process until the block ends; yield its ready line."""
    if dry:  # no GPU to load: the plumbing only
        yield "ready (dry run: no helper)"
        return
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"helper {args} did not start: {line!r}")
        yield line.strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ---- measurements ----

def plain_loop_tflops(torch: Any, gpu: int, seconds: float, n: int = N,
                      warmup_s: float = 0.0) -> float:
    """Time a plain ``c = a @ b`` loop with CUDA events, the way a user would write it.

    It warms up (clocks, cuBLAS) for 20 products and at least ``warmup_s`` seconds.
    """
    dev = torch.device("cuda", gpu)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t = time.monotonic()
    while True:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize(dev)
        if time.monotonic() - t >= warmup_s:
            break
    t = time.monotonic()
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize(dev)
    iters = max(20, int(seconds / ((time.monotonic() - t) / 20)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        c = a @ b
    end.record()
    torch.cuda.synchronize(dev)
    del c
    return 2.0 * n**3 * iters / (start.elapsed_time(end) / 1000.0) / 1e12


def phases(rep: Any) -> dict[str, Any]:
    """Return a report's wall time and where it went, per GPU."""
    ic = rep.interconnect
    return {
        "wall_seconds": rep.wall_seconds,
        "ok": rep.ok,
        "verdicts": [v.verdict.value for v in rep.verdicts],
        "gpus": [{"gpu": r.cuda_index, "setup_s": r.setup_s, "warmup_s": r.warmup_s,
                  "warmup_end": r.warmup_end,
                  "measured_s": sum(p.seconds for p in r.perf),
                  "memtest_s": r.memtest.seconds if r.memtest else None,
                  "memtest_passes": r.memtest.passes if r.memtest else None,
                  "memtest_gib": r.memtest.bytes_tested / GIB if r.memtest else None,
                  "memtest_concurrent": r.memtest.concurrent if r.memtest else None,
                  "tflops_mean": v.stats.tflops_mean}
                 for r, v in zip(rep.records, rep.verdicts, strict=True)],
        "interconnect_s": ic.record.seconds if ic is not None else None,
        "interconnect": ic.verdict.value if ic is not None else None,
    }


def verdict_summary(rep: Any) -> list[dict[str, Any]]:
    """Return each GPU's verdict, problems and notes."""
    return [{"gpu": v.cuda_index, "name": v.name, "verdict": v.verdict.value,
             "tflops_mean": v.stats.tflops_mean, "problems": [(p.verdict.value, p.evidence)
                                                               for p in v.problems],
             "notes": v.notes} for v in rep.verdicts]


class Bench:
    """The sections, sharing the output directory, the time budget and the torch in use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.cpu_dry_run
        self.out = Path(args.out)
        (self.out / "reports").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.res: dict[str, Any] = {"started": datetime.datetime.now(datetime.UTC).isoformat(),
                                    "sections": {}, "skipped": {}, "errors": {}}
        import torch

        self.torch = torch
        self.fake: Any = None
        self.backend = "nccl"
        if self.dry:
            from tests.support.fake_cuda import FakeTorch

            self.fake = FakeTorch(["GPU-dry-0", "GPU-dry-1"][:args.dry_gpus],
                                  name="NVIDIA H200", free_bytes=96 << 20)
            self.backend = "gloo"

    # -- plumbing --
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def save(self) -> None:
        (self.out / "burnin_v2.json").write_text(json.dumps(self.res, indent=1, default=str) + "\n")

    def section(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one section unless the budget is spent; keep going if it fails."""
        if self.args.only and name != "env" and name not in self.args.only.split(","):
            self.res["skipped"][name] = "not selected (--only)"
            return
        if self.elapsed() + need_s > self.args.budget_s:
            self.res["skipped"][name] = (f"budget: {self.elapsed():.0f} s spent, ~{need_s:.0f} s "
                                         f"needed, --budget-s {self.args.budget_s:.0f}")
            print(f"== {name}: skipped ({self.res['skipped'][name]})", flush=True)
            return
        print(f"== {name} (at {self.elapsed():.0f} s)", flush=True)
        t = time.monotonic()
        try:
            self.res["sections"][name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others
            self.res["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            print(f"   failed: {type(e).__name__}: {e}", flush=True)
        self.res.setdefault("section_seconds", {})[name] = time.monotonic() - t
        self.save()

    def burnin(self, name: str, **cfg: Any) -> Any:
        """Run one burn-in (real, or on the CPU stand-in) and keep its report."""
        from sentinel.burnin.api import run_burnin
        from sentinel.burnin.config import BurninConfig
        from sentinel.burnin.report import json_line

        if self.dry:
            from sentinel.burnin import allreduce

            allreduce.ALLREDUCE_BYTES = 1 << 20
            small = {"size": 256, "check_every": 4,
                     "memtest_seconds": min(cfg.get("memtest_seconds", 3.0), 0.2)}
            cfg = {**cfg, **small, "duration": min(cfg.get("duration", 20.0), 2.0),
                   "warmup": min(cfg.get("warmup", 5.0), 1.0), "bandwidth_tolerance": 0.9}
        rep = run_burnin(BurninConfig(**cfg), torch=self.fake, allreduce_backend=self.backend)
        (self.out / "reports" / f"{name}.json").write_text(json_line(rep.to_dict()) + "\n")
        print(f"   {name}: {[v.verdict.value for v in rep.verdicts]} in "
              f"{rep.wall_seconds:.1f} s", flush=True)
        return rep

    def n_gpus(self) -> int:
        return self.args.dry_gpus if self.dry else self.torch.cuda.device_count()

    # -- sections --
    def env(self) -> dict[str, Any]:
        """Record the machine: GPUs, driver, torch, CUDA, NCCL and its settings."""
        torch = self.torch
        out: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                               "cuda": torch.version.cuda, "gpus": self.n_gpus(),
                               "dry_run": self.dry,
                               "nccl_env": {k: v for k, v in os.environ.items()
                                            if k.startswith("NCCL_")}}
        if not self.dry:
            out["names"] = [torch.cuda.get_device_name(i) for i in range(self.n_gpus())]
            with contextlib.suppress(Exception):
                v = torch.cuda.nccl.version()
                out["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            with contextlib.suppress(Exception):
                import pynvml

                pynvml.nvmlInit()
                out["driver"] = pynvml.nvmlSystemGetDriverVersion()
                pynvml.nvmlShutdown()
        return out

    def verdict_time(self) -> dict[str, Any]:
        """v1's settings against v2's defaults, alternated; where each run's time went."""
        rounds = []
        for r in range(self.args.rounds):
            row = {"before": phases(self.burnin(
                f"v1_settings_{r}", warmup_mode="fixed", warmup=5.0, duration=30.0,
                memtest_seconds=3.0, interconnect=False))}
            if r == 0:  # the warm-up's share alone: v2's warm-up, v1's 30 s, no links
                row["steady_30s"] = phases(self.burnin(
                    "v2_warmup_30s_measured", duration=30.0, interconnect=False))
            self.unloaded = self.burnin(f"v2_default_{r}")
            row["after"] = phases(self.unloaded)
            rounds.append(row)
        before = statistics.median(x["before"]["wall_seconds"] for x in rounds)
        after = statistics.median(x["after"]["wall_seconds"] for x in rounds)
        return {"rounds": rounds, "before_median_s": before, "after_median_s": after,
                "goal_s": 30.0, "met": after <= 30.0,
                "after_verdicts": verdict_summary(self.unloaded),
                "after_interconnect_notes": (self.unloaded.interconnect.notes
                                             if self.unloaded.interconnect else [])}

    def _plain(self, seconds: float) -> float:
        if not self.dry:
            return plain_loop_tflops(self.torch, 0, seconds)
        a = self.torch.randn(256, 256)
        t, k = time.monotonic(), 0
        while time.monotonic() - t < 0.3:
            a @ a
            k += 1
        return 2.0 * 256**3 * k / (time.monotonic() - t) / 1e12

    def speed(self) -> dict[str, Any]:
        """Sentinel's loop against a plain torch loop on GPU 0, alternated."""
        plain, ours = [], []
        for r in range(self.args.rounds):
            plain.append(self._plain(8.0))
            rep = self.burnin(f"speed_{r}", gpus=[0], duration=10.0, memtest_seconds=0.0,
                              interconnect=False)
            ours.append(rep.verdicts[0].stats.tflops_mean or 0.0)
            print(f"   plain {plain[-1]:.1f} TFLOPS, sentinel {ours[-1]:.1f}", flush=True)
        return {"plain_tflops": plain, "sentinel_tflops": ours,
                "plain_median": statistics.median(plain),
                "sentinel_median": statistics.median(ours),
                "ratio": statistics.median(ours) / statistics.median(plain)}

    def competitor(self) -> dict[str, Any]:
        """A competing process on GPU 0 during a default burn-in of every GPU."""
        from sentinel.burnin.baselines import load_baselines
        from sentinel.burnin.verdict import VerdictConfig, judge

        with helper(["--hog", "0", "--seconds", "120"], self.dry) as ready:
            rep = self.burnin("competitor")
        out: dict[str, Any] = {"helper": ready, "wall_seconds": rep.wall_seconds,
                               "verdicts": verdict_summary(rep),
                               "gpu0_low_flops": rep.verdicts[0].verdict.value == "LOW_FLOPS",
                               "others_ok": all(v.ok for v in rep.verdicts[1:])}
        if len(rep.records) >= 2:  # no floors: only the node's best GPU can flag GPU 0
            cfg = rep.config
            alone = judge(rep.records, VerdictConfig(tolerance=cfg.tolerance,
                                                     sample_interval_s=cfg.sample_interval))
            out["node_best_only"] = [{"gpu": v.cuda_index, "verdict": v.verdict.value,
                                      "problems": [p.evidence for p in v.problems]}
                                     for v in alone]
        out["floor_tflops"] = load_baselines().get(rep.verdicts[0].name)
        return out

    def faults(self) -> dict[str, Any]:
        """Wrong results and a flipped memory bit on GPU 0, default settings."""
        from sentinel.burnin import runner

        prepare, memtest = runner.GpuWorker._prepare, runner.run_memtest

        def faulty(worker: Any, dev: Any) -> Any:
            mm, c, checker, ref_bad = prepare(worker, dev)

            def bad_mm() -> Any:
                out = mm()
                c[17, -1] += 1e4  # every result wrong in one element
                return out

            return bad_mm, c, checker, ref_bad

        def planted(*a: Any, **kw: Any) -> Any:
            def flip(chunks: list[Any]) -> None:
                chunks[0][12345] ^= 1 << 33

            return memtest(*a, **kw, after_write=flip)

        runner.GpuWorker._prepare, runner.run_memtest = faulty, planted
        try:
            rep = self.burnin("faults", gpus=[0])
        finally:
            runner.GpuWorker._prepare, runner.run_memtest = prepare, memtest
        v = rep.verdicts[0]
        return {"wall_seconds": rep.wall_seconds, "verdict": v.verdict.value,
                "problems": [(p.verdict.value, p.evidence) for p in v.problems],
                "caught": [p.verdict.value for p in v.problems][:2] == ["WRONG_RESULTS",
                                                                       "MEMORY_ERRORS"]}

    def nearly_full(self) -> dict[str, Any]:
        """A short burn-in of GPU 0 while another process holds all but a few GiB."""
        args = ["--fill", "0", "--leave-gib", str(self.args.leave_gib), "--seconds", "120"]
        if not self.dry:
            self.torch.cuda.empty_cache()  # this process's cache would count as held memory
        with helper(args, self.dry) as ready:
            free = (None if self.dry else self.torch.cuda.mem_get_info(0)[0])
            rep = self.burnin("nearly_full", gpus=[0], duration=5.0)
        m, v = rep.records[0].memtest, rep.verdicts[0]
        return {"helper": ready, "free_before_bytes": free, "verdict": v.verdict.value,
                "problems": [p.evidence for p in v.problems], "error": rep.records[0].error,
                "memtest": None if m is None else {
                    "free_bytes": m.free_bytes, "bytes_tested": m.bytes_tested,
                    "share_of_free": (m.bytes_tested / m.free_bytes) if m.free_bytes else None,
                    "passes": m.passes, "seconds": m.seconds, "note": m.note,
                    "mismatches": m.mismatches}}

    def interconnect(self) -> dict[str, Any]:
        """Copies between every ordered pair and the NCCL all-reduce, --rounds times."""
        from sentinel.burnin.allreduce import AllreduceRanks
        from sentinel.burnin.api import _cuda_identity
        from sentinel.burnin.links import measure_copies, node_topology
        from sentinel.burnin.sampler import NvmlSampler

        n = self.n_gpus()
        if n < 2:
            return {"skipped": "needs two or more GPUs",
                    "report_notes": getattr(getattr(self, "unloaded", None), "interconnect",
                                            None) and self.unloaded.interconnect.notes}
        torch = self.fake or self.torch
        gpus = list(range(n))
        sampler = NvmlSampler([_cuda_identity(torch, g) for g in gpus])
        sampler.start()
        topologies = sampler.link_topologies()
        sampler.stop()
        topo = node_topology(topologies)
        pairs: dict[str, list[float | None]] = {}
        busbw: list[float | None] = []
        errors = []
        for _ in range(self.args.rounds):
            for m in measure_copies(torch, gpus, topologies):
                pairs.setdefault(f"{m.src}->{m.dst} {m.topology}", []).append(m.gbps)
                if m.error or m.wrong_bytes:
                    errors.append(f"copy {m.src}->{m.dst}: {m.error or m.wrong_bytes}")
            ranks = AllreduceRanks(gpus, topo, backend=self.backend,
                                   **({"nbytes": 1 << 20} if self.dry else {}))
            ranks.start()
            a = ranks.run()
            busbw.append(a.busbw_gbps)
            if a.error:
                errors.append(f"all-reduce ({a.phase}): {a.error}")
            version = a.version
        ok_bus = [b for b in busbw if b is not None]
        return {"topology": topo, "pair_topologies": {f"{a}-{b}": t
                                                      for (a, b), t in topologies.items()},
                "copy_gbps": pairs,
                "copy_gbps_median": {k: statistics.median(x for x in v if x is not None)
                                     for k, v in pairs.items() if any(x is not None for x in v)},
                "allreduce_busbw_gbps": busbw,
                "allreduce_busbw_median": statistics.median(ok_bus) if ok_bus else None,
                "allreduce_gpus": n, "nccl": version, "errors": errors}

    # -- results --
    def floors(self) -> dict[str, Any]:
        """Return the measured figures the floors come from, with where they came from."""
        env = self.res["sections"].get("env", {})
        out: dict[str, Any] = {"measured_at": self.res["started"][:10], "env": env,
                               "bf16_tflops": {}, "interconnect": {}}
        unloaded = getattr(self, "unloaded", None)
        if unloaded is not None:
            by_name: dict[str, list[float]] = {}
            for v in unloaded.verdicts:
                if v.stats.tflops_mean:
                    by_name.setdefault(v.name, []).append(v.stats.tflops_mean)
            out["bf16_tflops"] = {k: min(x) for k, x in by_name.items()}
        ic = self.res["sections"].get("interconnect", {})
        names = [unloaded.verdicts[0].name] if unloaded is not None else env.get("names", [])
        if ic.get("copy_gbps_median") and names:
            name = names[0]
            out["interconnect"][name] = {ic["topology"]: {
                "copy_gbps": min(ic["copy_gbps_median"].values()),
                "allreduce_busbw_gbps": ({str(ic["allreduce_gpus"]): ic["allreduce_busbw_median"]}
                                         if ic.get("allreduce_busbw_median") else {})}}
        return out

    def summary(self) -> str:
        """Return the figures as text, for the log and docs/BENCHMARKS.md."""
        s = self.res["sections"]
        lines = [f"burn-in v2 bench, {self.res['started']}, {json.dumps(s.get('env', {}))}"]
        if "verdict_time" in s:
            vt = s["verdict_time"]
            lines.append(f"verdict time: v1 settings {vt['before_median_s']:.1f} s -> v2 default "
                         f"{vt['after_median_s']:.1f} s (goal <= 30 s: "
                         f"{'met' if vt['met'] else 'NOT met'})")
            for r in vt["rounds"]:
                for k, x in r.items():
                    lines.append(f"  {k}: {x['wall_seconds']:.1f} s {x['verdicts']} "
                                 f"interconnect {x['interconnect']} "
                                 f"{x['interconnect_s'] or 0:.1f} s; " + "; ".join(
                                     f"GPU {g['gpu']} setup {g['setup_s'] or 0:.1f} memtest "
                                     f"{g['memtest_s'] or 0:.1f} ({g['memtest_passes']} passes, "
                                     f"{g['memtest_gib'] or 0:.0f} GiB) warm-up "
                                     f"{g['warmup_s'] or 0:.1f} ({g['warmup_end']}) measured "
                                     f"{g['measured_s']:.1f} {g['tflops_mean'] or 0:.1f} TFLOPS"
                                     for g in x["gpus"]))
        if "speed" in s:
            sp = s["speed"]
            lines.append(f"speed: sentinel {sp['sentinel_median']:.1f} vs plain "
                         f"{sp['plain_median']:.1f} TFLOPS: ratio {sp['ratio']:.3f}")
        for k in ("competitor", "faults", "nearly_full", "interconnect"):
            if k in s:
                lines.append(f"{k}: {json.dumps(s[k], default=str)[:1500]}")
        for k, why in {**self.res["skipped"], **{k: v.splitlines()[0]
                                                 for k, v in self.res["errors"].items()}}.items():
            lines.append(f"{k}: NOT RUN OR FAILED: {why}")
        return "\n".join(lines) + "\n"

    def run(self) -> int:
        """Run every section within the budget; write the results."""
        self.section("env", 0, self.env)
        rounds = self.args.rounds
        self.section("verdict_time", rounds * 75 + 35, self.verdict_time)
        self.section("interconnect", 15 * rounds if self.n_gpus() > 1 else 0, self.interconnect)
        self.section("speed", rounds * 25, self.speed)
        self.section("competitor", 40, self.competitor)
        self.section("faults", 32, self.faults)
        self.section("nearly_full", 20, self.nearly_full)
        self.res["floors_measured"] = self.floors()
        self.res["total_seconds"] = self.elapsed()
        self.save()
        (self.out / "floors_measured.json").write_text(
            json.dumps(self.res["floors_measured"], indent=1, default=str) + "\n")
        text = self.summary()
        (self.out / "burnin_v2_summary.txt").write_text(text)
        print(text, flush=True)
        return 1 if self.res["errors"] else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", metavar="SECTIONS",
                    help="run only these sections (comma-separated, e.g. interconnect)")
    ap.add_argument("--budget-s", type=float, default=350.0,
                    help="skip sections that would end past this many seconds")
    ap.add_argument("--leave-gib", type=float, default=4.0)
    ap.add_argument("--hog", type=int, metavar="GPU", help="run as the competing process")
    ap.add_argument("--fill", type=int, metavar="GPU", help="run as the memory holder")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: run every section on the CPU stand-in (plumbing only)")
    ap.add_argument("--dry-gpus", type=int, default=2)
    args = ap.parse_args()
    if args.hog is not None:
        hog(args.hog, args.seconds)
        return 0
    if args.fill is not None:
        fill(args.fill, args.leave_gib, args.seconds)
        return 0
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("bench/burnin_v2_gpu.py needs CUDA and an NVIDIA GPU (or --cpu-dry-run)",
              file=sys.stderr)
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
