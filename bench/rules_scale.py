"""Time one full rules cycle over a real Prometheus holding a 1,024-node x 8-GPU fleet.

    python bench/rules_scale.py [--nodes 1024] [--gpus 8] [--interval 30] [--hours 1]
        [--cycles 5] [--out out] [--keep DIR]

Backfills an hour of series with ``promtool tsdb create-blocks-from openmetrics``
(tokens/sec per rank, four throttle-reason gauges per GPU, GPU up, disk read latency
per node), with a few injected problems (stragglers, throttled GPUs, a storage
stall), starts Prometheus on it and runs the default rules (every rule with series)
plus the diagnosis through the engine: one cycle = every range query and detector.
Prints the median cycle time of ``--cycles`` runs and writes ``<out>/rules_scale.json``.
The rules ask aggregate questions, so the data that comes back is the answer (a
cluster median and the few problem series), not the fleet.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detectors.openmetrics import backfill, backfill_rules  # noqa: E402
from sentinel.gpu.reasons import BAD_REASONS  # noqa: E402
from sentinel.rules.engine import Engine  # noqa: E402
from sentinel.rules.rulefile import load_rules  # noqa: E402
from sentinel.rules.sources import PrometheusSource  # noqa: E402
from tests.support.services import free_port, stop, wait_http  # noqa: E402

REASONS = BAD_REASONS  # the reasons the default gpu-throttle rule asks for


def generate(path: Path, nodes: int, gpus: int, interval: float, hours: float, end: float,
             seed: int = 0) -> dict[str, int]:
    """Write the fleet's OpenMetrics file; return counts of series and samples."""
    rng = np.random.default_rng(seed)
    ts = np.arange(end - hours * 3600, end + 1e-9, interval)
    n = len(ts)
    tstr = [f" {t:.3f}\n" for t in ts]
    stragglers = set(rng.choice(nodes, size=3, replace=False).tolist())
    throttled = {(int(h), int(g)) for h, g in zip(rng.choice(nodes, 4), rng.choice(gpus, 4),
                                                  strict=True)}
    stall_nodes = set(rng.choice(nodes, size=8, replace=False).tolist())
    problem_from = n - int(900 / interval)  # problems in the last 15 minutes
    series = samples = 0
    with path.open("w") as f:
        f.write("# TYPE sentinel_train_tokens_per_second gauge\n"
                "# HELP sentinel_train_tokens_per_second tokens/sec\n")
        for h in range(nodes):
            for g in range(gpus):
                v = 6000 * (1 + rng.normal(0, 0.02, n))
                if h in stragglers:
                    v[problem_from:] *= 0.75
                lab = (f'sentinel_train_tokens_per_second{{hostname="n{h:04d}",job="scale",'
                       f'rank="{h * gpus + g}"}} ')
                f.write("".join(lab + f"{x:.1f}" + t for x, t in zip(v, tstr, strict=True)))
                series += 1
                samples += n
        f.write("# TYPE sentinel_gpu_clock_event_active gauge\n"
                "# HELP sentinel_gpu_clock_event_active reason active\n")
        zeros = ["0" + t for t in tstr]
        for h in range(nodes):
            for g in range(gpus):
                for r in REASONS:
                    lab = (f'sentinel_gpu_clock_event_active{{UUID="GPU-{h:04d}-{g}",gpu="{g}",'
                           f'hostname="n{h:04d}",reason="{r}"}} ')
                    if (h, g) in throttled and r == "hw_slowdown":
                        vals = zeros[:problem_from] + ["1" + t for t in tstr[problem_from:]]
                    else:
                        vals = zeros
                    f.write("".join(lab + v for v in vals))
                    series += 1
                    samples += n
        f.write("# TYPE sentinel_gpu_up gauge\n# HELP sentinel_gpu_up GPU answers NVML\n")
        ones = ["1" + t for t in tstr]
        for h in range(nodes):
            for g in range(gpus):
                lab = f'sentinel_gpu_up{{UUID="GPU-{h:04d}-{g}",gpu="{g}",hostname="n{h:04d}"}} '
                f.write("".join(lab + v for v in ones))
                series += 1
                samples += n
        f.write("# TYPE sentinel_disk_read_latency_seconds gauge\n"
                "# HELP sentinel_disk_read_latency_seconds mean read latency\n")
        for h in range(nodes):
            v = 0.002 * np.exp(rng.normal(0, 0.2, n))
            if h in stall_nodes:
                v[problem_from:] *= 40
            lab = f'sentinel_disk_read_latency_seconds{{device="nvme0n1",hostname="n{h:04d}"}} '
            f.write("".join(lab + f"{x:.6f}" + t for x, t in zip(v, tstr, strict=True)))
            series += 1
            samples += n
        f.write("# EOF\n")
    return {"series": series, "samples": samples, "stragglers": len(stragglers),
            "throttled_gpus": len(throttled), "stalled_disks": len(stall_nodes)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--interval", type=float, default=30.0, help="sample spacing (dcgm-exporter "
                    "default 30 s)")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--out", default="out")
    ap.add_argument("--keep", help="keep the data here (reused by a later run if present)")
    ap.add_argument("--fetch-threads", type=int, nargs="+", default=[1, 4],
                    help="time the cycle with each of these numbers of fetch threads")
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rules_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    tsdb = work / "tsdb"
    meta_path = work / "meta.json"
    timings: dict[str, float] = {}
    if meta_path.exists() and tsdb.exists():
        meta = json.loads(meta_path.read_text())
    else:
        end = time.time() - 60
        t0 = time.perf_counter()
        om = work / "fleet.om"
        meta = generate(om, args.nodes, args.gpus, args.interval, args.hours, end)
        meta["end"] = end
        timings["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        backfill(om, tsdb)
        timings["backfill_s"] = time.perf_counter() - t0
        # What a running Prometheus would have recorded from the shipped rules.
        t0 = time.perf_counter()
        backfill_rules(tsdb, end - args.hours * 3600, end, args.interval)
        timings["backfill_rules_s"] = time.perf_counter() - t0
        om.unlink()
        meta_path.write_text(json.dumps(meta))
    print(f"data: {meta['series']} series, {meta['samples']} samples {timings}", flush=True)
    rules = [r for r in load_rules() if r.series or r.detector == "diagnosis"]
    port = free_port()
    (work / "prometheus.yml").write_text("global: {scrape_interval: 30s}\n")
    binary = shutil.which("prometheus") or "prometheus"
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", timeout=120, proc=proc)
        src = PrometheusSource(url, timeout=60)
        end = float(meta["end"])
        found_summary: list[str] = []
        by_threads: dict[int, list[float]] = {}
        for threads in args.fetch_threads:
            cycles = by_threads.setdefault(threads, [])
            for i in range(args.cycles + 1):  # the first cycle warms Prometheus's caches
                engine = Engine(rules, fetch_threads=threads)
                q0 = src.queries
                t0 = time.perf_counter()
                out = engine.evaluate(lambda rule, now: src.window(rule, now), now=end)
                dt = time.perf_counter() - t0
                if engine.errors:
                    raise RuntimeError(f"rule errors: {engine.errors}")
                if i == 0:
                    found_summary = sorted(f"{f.kind}:{f.evidence.get('cause', '')}:{f.node}"
                                           for f in out)
                    queries = src.queries - q0
                    continue
                cycles.append(dt)
        best = min(by_threads, key=lambda k: statistics.median(by_threads[k]))
        cycles = by_threads[best]
        result = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{__import__('os').cpu_count()} CPUs",
            "nodes": args.nodes, "gpus_per_node": args.gpus, "interval_s": args.interval,
            "hours": args.hours, **meta, **timings, "rules": [r.name for r in rules],
            "queries_per_cycle": queries,
            "cycle_seconds_by_fetch_threads": {str(k): v for k, v in by_threads.items()},
            "median_cycle_s_by_fetch_threads": {str(k): statistics.median(v)
                                                for k, v in by_threads.items()},
            "median_cycle_s": statistics.median(cycles), "findings": found_summary,
        }
        for k, v in by_threads.items():
            print(f"one full rules cycle, {k} fetch thread(s): median {statistics.median(v):.3f} s "
                  f"over {len(v)} cycles ({queries} range queries)")
        print(f"findings: {len(found_summary)}")
        for s in found_summary:
            print("  ", s)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rules_scale.json").write_text(json.dumps(result, indent=1))
    finally:
        stop(proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
