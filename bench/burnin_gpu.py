"""Benchmark `sentinel burnin` on a GPU box (about 3 minutes on one H100): v1's benchmark.

Kept for the figures docs/BENCHMARKS.md gives for v1; burn-in v2 (issue 16) is measured
by bench/burnin_v2_gpu.py. Run here with today's code, "default settings" are v2's.

Measures, in one run, on the same GPU:
1. speed: sentinel's measured TFLOPS against a plain `a @ b` torch loop (bf16, N=8192),
   alternated over --rounds rounds; the ratio of the medians (goal >= 0.95, and >= 730
   TFLOPS on H100 SXM as gpu-fryer reports);
2. time to a verdict with the default settings (30 s measured, 5 s warm-up, 3 s memory
   test) on every visible GPU, unloaded: expected verdict OK;
3. a deliberately slowed GPU: a competing process hammering GPU 0 with its own matmuls
   during a burn-in; expected LOW_FLOPS or THROTTLED on GPU 0 with the evidence, while
   other GPUs (if any) stay OK.

Writes --out/burnin_gpu.json and prints a summary. Usage:
    python bench/burnin_gpu.py --out out
    python bench/burnin_gpu.py --hog --gpu 0 --seconds 60   # the competing process
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.burnin_v2_gpu import (  # noqa: E402 - one competing process, one plain loop
    hog,
    plain_loop_tflops,
)

N = 8192


def summary(report) -> list[dict]:
    return [{"gpu": v.cuda_index, "name": v.name, "verdict": v.verdict.value,
             "tflops_mean": v.stats.tflops_mean, "tflops_median": v.stats.tflops_median,
             "temperature_max_c": v.stats.temperature_max_c, "power_mean_w": v.stats.power_mean_w,
             "throttle_seconds": v.stats.throttle_seconds,
             "problems": [(p.verdict.value, p.evidence) for p in v.problems], "notes": v.notes}
            for v in report.verdicts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hog", action="store_true", help="run as the competing process")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="shorter phases (smoke test)")
    args = ap.parse_args()
    if args.hog:
        hog(args.gpu, args.seconds)
        return 0

    import torch

    from sentinel.burnin.api import run_burnin
    from sentinel.burnin.config import BurninConfig

    if not torch.cuda.is_available():
        print("bench/burnin_gpu.py needs CUDA and an NVIDIA GPU", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    q = args.quick
    res: dict = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                 "torch": torch.__version__, "cuda": torch.version.cuda, "n": N}

    # 1. speed vs a plain loop, alternated so clock/thermal drift hits both alike.
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop_tflops(torch, 0, 4.0 if q else 8.0, warmup_s=2.0))
        rep = run_burnin(BurninConfig(gpus=[0], duration=5 if q else 10, warmup=2 if q else 3,
                                      memtest_seconds=0))
        ours.append(rep.verdicts[0].stats.tflops_mean or 0.0)
        print(f"round: plain {plain[-1]:.1f} TFLOPS, sentinel {ours[-1]:.1f} TFLOPS", flush=True)
    res["speed"] = {"plain_tflops": plain, "sentinel_tflops": ours,
                    "plain_median": statistics.median(plain),
                    "sentinel_median": statistics.median(ours),
                    "ratio": statistics.median(ours) / statistics.median(plain)}

    # 2. time to a verdict, default settings, every GPU, unloaded.
    cfg = BurninConfig(duration=10, warmup=2, memtest_seconds=1) if q else BurninConfig()
    t = time.monotonic()
    unloaded = run_burnin(cfg)
    res["unloaded"] = {"wall_seconds": time.monotonic() - t,
                       "config": {"duration": cfg.duration, "warmup": cfg.warmup,
                                  "memtest_seconds": cfg.memtest_seconds},
                       "ok": unloaded.ok, "gpus": summary(unloaded),
                       "memtest": [r.memtest.__dict__ if r.memtest else None
                                   for r in unloaded.records],
                       "correctness": [r.correctness.__dict__ if r.correctness else None
                                       for r in unloaded.records]}
    print(f"unloaded: ok={unloaded.ok} in {res['unloaded']['wall_seconds']:.1f} s", flush=True)

    # 3. a competing process on GPU 0.
    floor = None
    if unloaded.verdicts[0].baseline_tflops is None:
        # No shipped floor for this model: use this run's unloaded speed minus the tolerance.
        floor = (unloaded.verdicts[0].stats.tflops_mean or 0) * (1 - cfg.tolerance)
    dur = 8 if q else 15
    proc = subprocess.Popen([sys.executable, __file__, "--hog", "--gpu", "0", "--seconds",
                             str(dur + 30)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("ready"), f"competing process did not start: {line!r}"
        slowed = run_burnin(BurninConfig(duration=dur, warmup=2, memtest_seconds=0,
                                         baseline_tflops=floor))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    v0 = slowed.verdicts[0]
    res["slowed"] = {"floor_override": floor, "gpus": summary(slowed),
                     "gpu0_flagged": v0.verdict.value in ("LOW_FLOPS", "THROTTLED"),
                     "others_ok": all(v.ok for v in slowed.verdicts[1:])}
    print(f"slowed: GPU 0 {v0.verdict.value}: {[p.evidence for p in v0.problems]}", flush=True)

    (out_dir / "burnin_gpu.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    s = res["speed"]
    print(json.dumps({"ratio": round(s["ratio"], 4), "sentinel_median": s["sentinel_median"],
                      "plain_median": s["plain_median"],
                      "time_to_verdict_s": res["unloaded"]["wall_seconds"],
                      "unloaded_ok": unloaded.ok, "slowed_flagged": res["slowed"]["gpu0_flagged"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
