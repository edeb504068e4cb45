"""Time one full rules cycle over a real Prometheus and a real VictoriaMetrics, same fleet.

    python bench/rules_scale.py [--nodes 1024] [--gpus 8] [--interval 30] [--hours 1]
        [--problems 1] [--cycles 5] [--backends prometheus victoria-metrics] [--out out]
        [--keep DIR] [--prepare-only]

Backfills an hour of series with ``promtool tsdb create-blocks-from openmetrics``
(tokens/sec per rank, four throttle-reason gauges per GPU, GPU up, disk read latency
per node), with a few injected problems (stragglers, throttled GPUs, a storage
stall), then the shipped recording rules over that hour (``promtool tsdb
create-blocks-from rules``). VictoriaMetrics gets the very same blocks, raw and
recorded, through ``vmctl prometheus`` and runs with the shipped flags
(deploy/fleet/default/victoria-metrics) plus ``-search.disableCache``: the data lies in
the past, so its result cache would answer every cycle after the first from memory,
which a live engine asking about ``now`` does not get (Prometheus has no such cache).

Each store in turn (the other stopped) serves the default rules (every rule with
series) plus the diagnosis through the engine: one cycle = every range query and
detector. Prints the median cycle time of ``--cycles`` runs per store, the time and
answer size of each rule's queries, and the store's memory (RSS now and peak) after
the cycles, and writes ``<out>/rules_scale.json``. The rules ask aggregate questions,
so what comes back is the answer (a cluster median and the few problem series), not
the fleet; what each store reads to compute it is the fleet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detectors.openmetrics import backfill, backfill_rules  # noqa: E402
from sentinel.gpu.reasons import BAD_REASONS  # noqa: E402
from sentinel.rules.engine import Engine  # noqa: E402
from sentinel.rules.rulefile import Rule, load_rules  # noqa: E402
from sentinel.rules.sources import PrometheusSource  # noqa: E402
from sentinel.rules.window import Window  # noqa: E402
from tests.support.services import free_port, stop, wait_http  # noqa: E402
from tests.support.victoria import run_victoria_metrics  # noqa: E402

BACKENDS = ("prometheus", "victoria-metrics")
VMCTL_TIMEOUT_S = 3600
STORE_READY_S = 300.0

REASONS = BAD_REASONS  # the reasons the default gpu-throttle rule asks for


def generate(path: Path, nodes: int, gpus: int, interval: float, hours: float, end: float,
             seed: int = 0, problems: int = 1) -> dict[str, int]:
    """Write the fleet's OpenMetrics file; return counts of series and samples.

    ``problems`` multiplies the injected problems (3 stragglers, 4 throttled GPUs, 8 slow
    disks), to tell the cost of the answer from the cost of the fleet.
    """
    rng = np.random.default_rng(seed)
    ts = np.arange(end - hours * 3600, end + 1e-9, interval)
    n = len(ts)
    tstr = [f" {t:.3f}\n" for t in ts]
    stragglers = set(rng.choice(nodes, size=3 * problems, replace=False).tolist())
    throttled = {(int(h), int(g)) for h, g in zip(rng.choice(nodes, 4 * problems),
                                                  rng.choice(gpus, 4 * problems), strict=True)}
    stall_nodes = set(rng.choice(nodes, size=8 * problems, replace=False).tolist())
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


def build(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Generate and backfill the fleet into ``work/tsdb`` once; return its description."""
    tsdb = work / "tsdb"
    meta_path = work / "meta.json"
    if meta_path.exists() and tsdb.exists():
        return dict(json.loads(meta_path.read_text()))
    end = time.time() - 60
    t0 = time.perf_counter()
    om = work / "fleet.om"
    meta: dict[str, Any] = generate(om, args.nodes, args.gpus, args.interval, args.hours, end,
                                    problems=args.problems)
    meta.update(end=end, nodes=args.nodes, gpus_per_node=args.gpus, interval_s=args.interval,
                hours=args.hours, problems=args.problems,
                generate_s=time.perf_counter() - t0)
    t0 = time.perf_counter()
    backfill(om, tsdb)
    meta["backfill_s"] = time.perf_counter() - t0
    # What a running Prometheus (or vmalert) would have recorded from the shipped rules.
    t0 = time.perf_counter()
    backfill_rules(tsdb, end - args.hours * 3600, end, args.interval)
    meta["backfill_rules_s"] = time.perf_counter() - t0
    om.unlink()
    meta_path.write_text(json.dumps(meta))
    return meta


def import_victoria(work: Path, meta: dict[str, Any]) -> None:
    """Copy the Prometheus blocks (raw and recorded) into ``work/vmdata`` with vmctl, once."""
    if meta.get("vm_import_s") is not None and (work / "vmdata").exists():
        return
    shutil.rmtree(work / "vmdata", ignore_errors=True)
    vmctl = shutil.which("vmctl") or "vmctl"
    with run_victoria_metrics(work / "vm-import", data_path=work / "vmdata", dedup_interval="15s",
                              ready_timeout=STORE_READY_S) as vm:
        t0 = time.perf_counter()
        rc, output = run_in_terminal(
            [vmctl, "prometheus", "-s", f"--prom-snapshot={work / 'tsdb'}",
             f"--vm-addr={vm.url}", "--vm-disable-progress-bar", "--prom-concurrency=2"],
            VMCTL_TIMEOUT_S)
        if rc != 0:
            raise RuntimeError(f"vmctl failed ({rc}): {output[-2000:]}")
        vm.flush()
        meta["vm_import_s"] = time.perf_counter() - t0
        meta["vm_series"] = int(requests_json(f"{vm.url}/api/v1/series/count")["data"][0])
    (work / "meta.json").write_text(json.dumps(meta))


def run_in_terminal(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal; return its exit code and output.

    vmctl 1.79 sets its terminal to raw mode even with ``-s`` and
    ``--vm-disable-progress-bar``, and exits 1 when it has no terminal.
    """
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a pty holds a few KiB; read it all so vmctl never blocks
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, stdin=slave, stdout=slave, stderr=slave, timeout=timeout,
                              check=False)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def requests_json(url: str) -> Any:
    """GET ``url`` and return its JSON body."""
    import requests  # noqa: PLC0415 - only needed here

    r = requests.get(url, timeout=60)
    r.raise_for_status()
    return r.json()


@contextlib.contextmanager
def store(backend: str, work: Path) -> Iterator[tuple[str, int]]:
    """Start one store on the fleet's data; yield its URL and PID."""
    if backend == "victoria-metrics":
        with run_victoria_metrics(work / "vm-bench", data_path=work / "vmdata",
                                  dedup_interval="15s", add=["-search.disableCache"],
                                  ready_timeout=STORE_READY_S) as vm:
            yield vm.url, vm.proc.pid
        return
    port = free_port()
    (work / "prometheus.yml").write_text("global: {scrape_interval: 30s}\n")
    binary = shutil.which("prometheus") or "prometheus"
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", timeout=STORE_READY_S, proc=proc)
        yield url, proc.pid
    finally:
        stop(proc, timeout=60)


def memory(pid: int) -> dict[str, int]:
    """Return a process's resident memory now and at its peak, in bytes (from /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_bytes" if key == "VmRSS" else "peak_rss_bytes"] = int(val.split()[0]) * 1024
    return out


def du(path: Path) -> int:
    """Return the bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(url: str, rules: list[Rule], end: float, cycles: int,
            fetch_threads: list[int]) -> dict[str, Any]:
    """Time full cycles per number of fetch threads, and each rule's fetch (sequential)."""
    src = PrometheusSource(url, timeout=120)
    result: dict[str, Any] = {"cycle_seconds_by_fetch_threads": {}}
    for threads in fetch_threads:
        times: list[float] = []
        per_rule: dict[str, list[float]] = {}
        answer: dict[str, dict[str, int]] = {}
        windows: dict[str, Window] = {}

        def fetch(rule: Rule, now: float, per_rule: dict[str, list[float]] = per_rule,
                  answer: dict[str, dict[str, int]] = answer,
                  windows: dict[str, Window] = windows) -> Window:
            t0 = time.perf_counter()
            w = src.window(rule, now)
            per_rule.setdefault(rule.name, []).append(time.perf_counter() - t0)
            answer[rule.name] = {"series": sum(len(v) for v in w.series.values()),
                                 "points": sum(len(x.points) for v in w.series.values()
                                               for x in v)}
            windows[rule.name] = w
            return w

        for i in range(cycles + 1):  # the first cycle warms the store's caches
            engine = Engine(rules, fetch_threads=threads)
            q0 = src.queries
            t0 = time.perf_counter()
            out = engine.evaluate(fetch, now=end)
            dt = time.perf_counter() - t0
            if engine.errors:
                raise RuntimeError(f"rule errors: {engine.errors}")
            if i == 0:
                result["findings"] = sorted(
                    f"{f.kind}:{f.evidence.get('cause', '')}:{f.node}" for f in out)
                result["queries_per_cycle"] = src.queries - q0
                per_rule.clear()
                continue
            times.append(dt)
        result["cycle_seconds_by_fetch_threads"][str(threads)] = times
        if threads == 1:
            result["fetch_s_by_rule"] = {k: statistics.median(v) for k, v in per_rule.items()}
            result["answer_by_rule"] = dict(answer)
            result["fetch_s_total"] = sum(result["fetch_s_by_rule"].values())
            result["detect_s"] = detect_time(rules, windows, end, cycles)
    result["median_cycle_s_by_fetch_threads"] = {
        k: statistics.median(v) for k, v in result["cycle_seconds_by_fetch_threads"].items()}
    return result


def detect_time(rules: list[Rule], windows: dict[str, Window], end: float,
                cycles: int) -> float:
    """Return the median time of a cycle's detectors and engine alone, on fetched windows."""
    times = []
    for _ in range(cycles):
        engine = Engine(rules, fetch_threads=1)
        t0 = time.perf_counter()
        engine.evaluate(lambda rule, now: windows[rule.name], now=end)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--interval", type=float, default=30.0, help="sample spacing (dcgm-exporter "
                    "default 30 s)")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--problems", type=int, default=1,
                    help="multiply the injected problems (3 stragglers, 4 throttled GPUs, "
                    "8 slow disks) by this")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--out", default="out")
    ap.add_argument("--keep", help="keep the data here (reused by a later run if present)")
    ap.add_argument("--prepare-only", action="store_true",
                    help="build and import the data (into --keep), measure nothing")
    ap.add_argument("--fetch-threads", type=int, nargs="+", default=[1, 4],
                    help="time the cycle with each of these numbers of fetch threads")
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rules_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        meta = build(work, args)
        if "victoria-metrics" in args.backends:
            import_victoria(work, meta)
        if args.prepare_only:
            print(f"prepared in {work}: {json.dumps(meta)}")
            return 0
        print(f"data: {meta['series']} series, {meta['samples']} samples, ending "
              f"{datetime.fromtimestamp(meta['end'], UTC):%Y-%m-%d %H:%M} UTC", flush=True)
        rules = [r for r in load_rules() if r.series or r.detector == "diagnosis"]
        result: dict[str, Any] = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
            **meta, "rules": [r.name for r in rules], "backends": {}}
        for backend in args.backends:
            with store(backend, work) as (url, pid):
                res = measure(url, rules, float(meta["end"]), args.cycles, args.fetch_threads)
                res.update(memory(pid))
            res["disk_bytes"] = du(work / ("tsdb" if backend == "prometheus" else "vmdata"))
            result["backends"][backend] = res
            report(backend, res)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rules_scale.json").write_text(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(backend: str, res: dict[str, Any]) -> None:
    """Print one store's figures."""
    print(f"== {backend}: RSS {res['rss_bytes'] / 2**20:.0f} MiB now, "
          f"{res['peak_rss_bytes'] / 2**20:.0f} MiB peak; data {res['disk_bytes'] / 2**20:.0f} MiB")
    for k, v in res["median_cycle_s_by_fetch_threads"].items():
        print(f"one full rules cycle, {k} fetch thread(s): median {v:.3f} s "
              f"({res['queries_per_cycle']} range queries)")
    for name, t in res.get("fetch_s_by_rule", {}).items():
        a = res["answer_by_rule"][name]
        print(f"  {name:14s} {t * 1000:8.1f} ms  {a['series']:6d} series {a['points']:8d} points")
    if "detect_s" in res:
        print(f"  detectors      {res['detect_s'] * 1000:8.1f} ms")
    print(f"findings: {len(res['findings'])}")
    for s in res["findings"]:
        print("  ", s)


if __name__ == "__main__":
    raise SystemExit(main())
