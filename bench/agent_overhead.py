"""Measure the agent's overhead: collect-and-render vs nvidia-smi, RSS, Reporter.step, training.

Run on the GPU machine:  python bench/agent_overhead.py --out out
Parts that need a GPU (nvidia-smi comparison, training throughput) are skipped with a
note when none is present; Reporter.step runs anywhere. Prints a table and writes
out/agent_overhead.json. ``--ab-base REF`` also compares this checkout's scrape cost and
agent RSS with git revision REF's, in the same run (bench/agent_ab.py; real NVML when
a GPU is there, the H100 replay otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_start import agent_process, in_process_agent, loaded_agent_memory  # noqa: E402

SMI_FIELDS = (
    "index,uuid,name,pci.bus_id,temperature.gpu,temperature.memory,clocks.sm,clocks.mem,"
    "clocks.max.sm,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,"
    "power.limit,enforced.power.limit,clocks_event_reasons.active,ecc.errors.corrected.volatile.total,"
    "ecc.errors.uncorrected.volatile.total,ecc.errors.corrected.aggregate.total,"
    "ecc.errors.uncorrected.aggregate.total,pcie.link.gen.current"
)


def median_us(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def bench_collect(args, res: dict) -> None:
    """Time a scrape (collect + render, the default collectors) and its parts."""
    from sentinel.agent.exporter import Agent

    with in_process_agent(args.gpu_replay) as agent:
        body = agent.render()
        gpu_ok = b"sentinel_gpu_nvml_available" in body and b'sentinel_gpu_up{' in body
        res["agent_collectors"] = ",".join(c.name for c in agent.collectors)
        res["agent_gpus_seen"] = body.count(b"sentinel_gpu_up{")
        res["collect_render_median_us"] = median_us(agent.render, args.n)
        gpu_only = Agent(agent.ctx, [c for c in agent.collectors if c.name == "gpu"])
        res["collect_render_gpu_only_median_us"] = median_us(gpu_only.render, args.n)
        breakdown(agent, args.n, res)
        bench_phases(agent, args.n, res)
        bench_http(agent, args.n, res)
    # The same with every NVML field read on every scrape (gpu_slow_fields_seconds=0):
    # what a scrape costs when the slow counters are due for their refresh.
    with in_process_agent(args.gpu_replay, gpu_slow_fields_seconds=0.0) as cold:
        res["collect_render_all_fields_median_us"] = median_us(cold.render, max(10, args.n // 5))
    smi = shutil.which("nvidia-smi")
    if smi and gpu_ok and not args.gpu_replay:
        argv = [smi, f"--query-gpu={SMI_FIELDS}", "--format=csv"]

        def call():
            subprocess.run(argv, capture_output=True, timeout=60, check=True)

        res["nvidia_smi_query_median_us"] = median_us(call, max(5, args.n // 20), warmup=1)
        res["speedup_vs_nvidia_smi"] = (
            res["nvidia_smi_query_median_us"] / res["collect_render_median_us"]
        )
        res["speedup_goal"] = 50.0
        res["speedup_vs_nvidia_smi_all_fields"] = (
            res["nvidia_smi_query_median_us"] / res["collect_render_all_fields_median_us"]
        )
    else:
        res["nvidia_smi_note"] = "no nvidia-smi or no GPU seen by NVML: comparison skipped"


def breakdown(agent, n: int, res: dict) -> None:
    """Time each part of a scrape alone: NVML calls, each collect, render.

    ``part_nvml_us`` is the gpu collector's NVML reads (every GPU, slow fields cached as
    in a scrape), inside ``part_collect_gpu_us``; ``part_render_us`` writes one scrape's
    families as a scrape does when nothing changed (every family from its last text),
    ``part_render_all_changed_us`` when every value changed since the last scrape;
    ``part_unexplained_us`` is the scrape less all these parts (bench_phases shows where
    it goes).
    """
    from sentinel import exposition
    from sentinel.exposition import Sample

    gpu = agent.collector("gpu")
    nv = getattr(gpu, "_nvml", None)
    if nv is not None:
        indexes = [d.index for d in nv.devices()]
        res["part_nvml_us"] = median_us(lambda: [nv.sample(i) for i in indexes], n)
    total = 0.0
    for c in agent.collectors:
        res[f"part_collect_{c.name}_us"] = t = median_us(c.collect, n)
        total += t
    families = agent.collect_families()
    res["part_render_us"] = t = median_us(lambda: exposition.render(families), n)
    total += t
    # Two copies of the families whose every value differs: rendered in turn, each
    # family misses the cache every time, as when every value changes between scrapes.
    other = copy_families(families, lambda s: Sample(s.name, s.labels, s.value + 0.5))
    turn = [families, other]

    def changed() -> None:
        turn.reverse()
        exposition.render(turn[0])

    res["part_render_all_changed_us"] = median_us(changed, n)
    res["part_unexplained_us"] = res["collect_render_median_us"] - total


def copy_families(families, sample):
    """Return shallow copies of ``families`` with each sample mapped by ``sample``."""
    import copy

    out = []
    for f in families:
        g = copy.copy(f)
        g.samples = [sample(s) for s in f.samples]
        out.append(g)
    return out


def bench_phases(agent, n: int, res: dict) -> None:
    """Time the phases of the real scrape from inside (``Agent.phases``), and its misses.

    ``scrape_phase_collect_us``: from the scrape's start until its last collect is in
    (hand-off, the collects, the wake-up); ``scrape_phase_agent_us``: the agent's own
    families and bookkeeping; ``scrape_phase_render_us``: the render.
    ``scrape_collect_<name>_us``: each collect as timed in the scrape
    (``sentinel_collector_duration_seconds``), against ``part_collect_<name>_us`` alone;
    ``scrape_collect_handoff_us``: the collect phase less those collects;
    ``scrape_render_misses``: families written afresh (not from the render cache) per
    scrape; ``handoff_us``: a scrape's collect phase with one collector that does nothing.
    """
    from sentinel import exposition
    from sentinel.agent.collectors import Collector
    from sentinel.agent.exporter import Agent

    phases: dict[str, list[float]] = {k: [] for k in ("collect", "agent", "render")}
    inside: dict[str, list[float]] = {c.name: [] for c in agent.collectors}
    misses: list[int] = []
    fresh = exposition._render_family
    missed = [0]

    def counted(f, header):
        missed[0] += 1
        return fresh(f, header)

    exposition._render_family = counted
    try:
        for _ in range(n):
            missed[0] = 0
            body = agent.render()
            misses.append(missed[0])
            for k, v in agent.phases._asdict().items():
                phases[k].append(v)
            for s in _durations(body):
                inside[s.labels["collector"]].append(s.value)
    finally:
        exposition._render_family = fresh
    for k, v in phases.items():
        res[f"scrape_phase_{k}_us"] = statistics.median(v) * 1e6
    total = 0.0
    for name, v in inside.items():
        res[f"scrape_collect_{name}_us"] = t = statistics.median(v) * 1e6
        total += t
    res["scrape_collect_handoff_us"] = res["scrape_phase_collect_us"] - total
    res["scrape_render_misses"] = statistics.median(misses)
    res["scrape_families"] = len(agent.collect_families())

    class Noop(Collector):
        name = "noop"

        def collect(self):
            return []

    noop = Agent(agent.ctx, [Noop(agent.ctx)])
    try:
        timeout = agent.ctx.config.collector_timeout_seconds
        res["handoff_us"] = median_us(lambda: noop._run(timeout), n)
    finally:
        noop.close()


def _durations(body: bytes):
    """Yield the sentinel_collector_duration_seconds samples of one scrape's text."""
    from sentinel.exposition import parse

    lines = [ln for ln in body.decode().splitlines()
             if ln.startswith("sentinel_collector_duration_seconds{")]
    for f in parse("\n".join(lines) + "\n"):
        yield from f.samples


def bench_http(agent, n: int, res: dict) -> None:
    """Time GET /metrics over one kept-alive connection to the agent's HTTP server."""
    import http.client

    from sentinel.agent.server import HttpServer

    server = HttpServer("127.0.0.1", 0, agent)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        def get() -> None:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"/metrics answered {r.status}")

        res["http_scrape_median_us"] = t = median_us(get, n)
        res["part_http_us"] = t - res["collect_render_median_us"]
    finally:
        conn.close()
        server.stop()


def bench_samplers(args, res: dict) -> None:
    """Measure the agent's 1 s samplers' CPU on this machine, as a % of one core.

    An agent in this process, reading this machine's /proc/diskstats and GPUs, with a
    job reporting a step every 50 ms so the node-records sampler runs too; each sampler
    thread's CPU time is read from the kernel (``/proc/self/task/TID/schedstat``, in ns)
    before and after ``--sampler-seconds`` of wall time, with no scrape in between.
    """
    from sentinel.train.reporter import Reporter

    with in_process_agent(args.gpu_replay) as agent:
        threads = {}
        disk = agent.collector("disk_stall")
        if disk is not None and disk._thread is not None:
            threads["disk_stall"] = disk._thread
        if agent.node_sampler is not None and agent.node_sampler._thread is not None:
            threads["node_records"] = agent.node_sampler._thread
        rep = Reporter(job="bench-sampler", socket_path=agent.ctx.config.socket)
        rep.step(0, loss=1.0, tokens=1)
        time.sleep(1.5)  # both samplers have run once
        if not _schedstat(threading.get_native_id()):
            res["sampler_note"] = "no /proc/self/task/*/schedstat: sampler cost not measured"
            return
        before = {k: _schedstat(t.native_id) for k, t in threads.items()}
        t0 = time.perf_counter()
        step = 1
        while time.perf_counter() - t0 < args.sampler_seconds:
            rep.step(step, loss=1.0, tokens=1)
            step += 1
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        for k, t in threads.items():
            cpu = (_schedstat(t.native_id) - before[k]) / 1e9
            res[f"sampler_{k}_cpu_percent_of_core"] = 100.0 * cpu / wall
        res["sampler_node_records_seconds"] = len(agent.node_ring)
        res["sampler_disk_stall_goal_percent"] = 0.5
        res["sampler_wall_s"] = wall


def _schedstat(tid: int | None) -> int:
    """Return the CPU time a thread of this process has run, in ns (0: unknown)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def bench_rss(res: dict) -> None:
    """Start a real agent process, feed it 2000 steps, scrape it 20 times, read its RSS."""
    mem = loaded_agent_memory()
    res["agent_rss_mb"] = mem["rss_mb"]
    res["agent_rss_goal_mb"] = 60


def bench_ab(args, res: dict) -> None:
    """Run bench/agent_ab.py: REF (exported with git archive) against this checkout."""
    base = Path(tempfile.mkdtemp()) / "base"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ab_base],
                             capture_output=True, timeout=120, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, timeout=120, check=True)
    out = base.parent / "ab.json"
    real = not args.gpu_replay and shutil.which("nvidia-smi") is not None
    argv = [sys.executable, str(ROOT / "bench" / "agent_ab.py"), "--tree", f"base={base}",
            "--tree", f"head={ROOT}", "--rounds", str(args.ab_rounds), "--out", str(out),
            *(["--real-nvml"] if real else []),
            *(["--gpu-replay", args.gpu_replay] if args.gpu_replay else [])]
    subprocess.run(argv, timeout=3600, check=True)
    summary = json.loads(out.read_text())["summary"]
    res["ab_base"] = args.ab_base
    res["ab_nvml"] = "real" if real else "replay"
    for k, v in summary.items():
        res[f"ab_{k}_base"] = v["base"]
        res[f"ab_{k}_head"] = v["head"]
        res[f"ab_{k}_head_over_base"] = v["head/base"]


def bench_reporter(args, res: dict) -> None:
    from sentinel.protocol import MAX_DATAGRAM_BYTES
    from sentinel.train.reporter import Reporter

    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "r.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sink.bind(path)
    sink.setblocking(False)
    rep = Reporter(job="bench", rank=0, socket_path=path, gpu_uuid="GPU-bench")
    # Time each call alone (perf_counter_ns costs ~0.05 us) and drain the sink between
    # calls, outside the timing, so every timed call is a successful send.
    times = []
    for i in range(args.n * 100):
        t0 = time.perf_counter_ns()
        rep.step(i, loss=2.5, tokens=4096, grad_norm=1.1)
        times.append(time.perf_counter_ns() - t0)
        try:
            while True:
                sink.recv(MAX_DATAGRAM_BYTES)
        except BlockingIOError:
            pass
    res["reporter_step_median_us"] = statistics.median(times) / 1000
    res["reporter_step_p99_us"] = sorted(times)[int(len(times) * 0.99)] / 1000
    res["reporter_step_goal_us"] = 5.0
    res["reporter_sent"], res["reporter_dropped"] = rep.sent, rep.dropped
    absent = Reporter(job="bench", socket_path=os.path.join(tmp, "absent.sock"))
    res["reporter_step_no_agent_median_us"] = median_us(
        lambda: absent.step(1, loss=1.0, tokens=1), args.n * 10)
    sink.close()


def bench_training(args, res: dict) -> None:
    try:
        import torch
    except ImportError:
        res["training_note"] = "torch not installed"
        return
    if not torch.cuda.is_available():
        res["training_note"] = "no CUDA device: training throughput skipped"
        return

    torch.manual_seed(0)
    dev = "cuda"
    d, layers, seq, batch = 1024, 6, 512, 16
    layer = torch.nn.TransformerEncoderLayer(d, 16, 4 * d, batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, layers).to(dev, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, seq, d, device=dev, dtype=torch.bfloat16)
    tokens = batch * seq
    # A real agent process drains the socket, as on a node: reading in the training
    # process would charge the agent's work to the Reporter.
    with agent_process(None, "--no-collector.gpu") as (_proc, _url, path):
        _training_pairs(args, res, model, opt, x, tokens, path)
    res["train_device"] = torch.cuda.get_device_name(0)


def _training_pairs(args, res: dict, model, opt, x, tokens: int, path: str) -> None:
    """Run the ABBA training segments with and without a Reporter (and A/A)."""
    import torch

    from sentinel.train.reporter import Reporter

    def run(steps: int, reporter) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            loss = model(x).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # A real loop reads the loss for logging either way; only the Reporter differs.
            value = float(loss.detach())
            if reporter is not None:
                reporter.step(i, loss=value, tokens=tokens)
        torch.cuda.synchronize()
        return steps * tokens / (time.perf_counter() - t0)

    run(10, None)
    rep = Reporter(job="bench", socket_path=path)

    def pairs(second) -> list[float]:
        """Ratios second/baseline over ABBA-ordered pairs of short segments."""
        ratios = []
        for r in range(args.rounds):
            # Short segments and ABBA order keep clock drift (the GPU sits at its power
            # cap) out of each pair's ratio.
            if r % 2 == 0:
                b = run(args.steps, None)
                w = run(args.steps, second)
            else:
                w = run(args.steps, second)
                b = run(args.steps, None)
            ratios.append(w / b)
        return ratios

    with_ratios = pairs(rep)
    # The same procedure with no Reporter on either side: the method's own noise floor.
    aa_ratios = pairs(None)
    res["train_reporter_sent"] = rep.sent
    res["train_reporter_dropped"] = rep.dropped
    res["train_pairs"] = args.rounds
    res["train_steps_per_segment"] = args.steps
    res["train_throughput_ratio"] = statistics.median(with_ratios)
    res["train_throughput_ratio_mean"] = statistics.fmean(with_ratios)
    res["train_aa_ratio_median"] = statistics.median(aa_ratios)
    res["train_aa_ratio_stdev"] = statistics.stdev(aa_ratios)
    res["train_ratio_stdev"] = statistics.stdev(with_ratios)
    res["train_ratio_stderr"] = statistics.stdev(with_ratios) / math.sqrt(len(with_ratios))
    res["train_throughput_goal"] = 0.995


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out")
    p.add_argument("--n", type=int, default=200, help="repetitions for medians")
    p.add_argument("--steps", type=int, default=20, help="training steps per segment")
    p.add_argument("--rounds", type=int, default=40, help="ABBA pairs")
    p.add_argument("--gpu-replay", help="use a captured NVML dump instead of the real GPU")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--only-training", action="store_true")
    p.add_argument("--ab-base", metavar="REF",
                   help="also A/B scrape cost and RSS against git revision REF (e.g. main)")
    p.add_argument("--ab-rounds", type=int, default=5, help="A/B rounds (ABBA order)")
    p.add_argument("--sampler-seconds", type=float, default=10.0,
                   help="wall time over which the 1 s samplers' CPU is measured")
    args = p.parse_args()
    res: dict = {"machine": platform.node(), "python": platform.python_version(),
                 "cpu": platform.processor() or platform.machine()}
    if not args.only_training:
        bench_reporter(args, res)
        bench_collect(args, res)
        bench_samplers(args, res)
        bench_rss(res)
        if args.ab_base:
            bench_ab(args, res)
    if not args.skip_training:
        bench_training(args, res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent_overhead.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
