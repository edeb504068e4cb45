"""A/B the agent's scrape cost and RSS between source trees, in one run.

    python bench/agent_ab.py --tree before=/tmp/before --tree after=. --rounds 5

Each ``--tree`` is a checkout of sentinel (``git archive REF | tar -x -C DIR`` gives
one). Every measure runs in a fresh child process with ``PYTHONPATH`` set to that tree,
the trees taking turns round by round (ABBA order), so load from other processes on
the machine falls on both alike. Absolute times differ between machines; the ratios
between trees measured in the same run are the result. The collectors read the captured
H100 dump (``--gpu-replay``, default tests/fixtures/h100/nvml_idle.json), or the GPUs
through NVML with ``--real-nvml`` (``bench/agent_overhead.py --ab-base REF`` does that).

Measures per tree: the median wall time and process CPU of one scrape (collect + render,
the default collectors; the gpu collector alone), the scrape's phases as
``bench/agent_overhead.py`` times them from inside (``scrape_phase_*``,
``scrape_collect_<name>_us``, the hand-off), and the RSS of a real ``sentinel agent``
process after 2000 step reports and 20 scrapes. Prints a table; ``--out`` writes JSON.
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

from agent_start import in_process_agent, loaded_agent_memory

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPLAY = ROOT / "tests" / "fixtures" / "h100" / "nvml_idle.json"
CHILD_TIMEOUT_S = 300


def _child_scrape(n: int, replay: str) -> dict[str, float]:
    """Time scrapes in this process (whichever sentinel PYTHONPATH gives)."""
    import sentinel
    from sentinel.agent.exporter import Agent

    # agent_overhead puts its own tree first on sys.path: import it with sentinel
    # already loaded, and put the path back, so the tree measured is PYTHONPATH's.
    path = list(sys.path)
    from agent_overhead import bench_phases  # noqa: PLC0415

    sys.path[:] = path
    if not Path(sentinel.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise SystemExit(f"measuring {sentinel.__file__}, not the tree in {Path.cwd()}")

    res: dict[str, float] = {}
    with in_process_agent(replay) as agent:
        if b"sentinel_gpu_up{" not in agent.render():
            raise SystemExit("the scrape has no GPU series: is the replay file right?")
        res.update(_time("all", agent.render, n))
        # Where the scrape's time went, from inside (phases, each collect, the hand-off).
        bench_phases(agent, n, res)
        gpu_only = Agent(agent.ctx, [c for c in agent.collectors if c.name == "gpu"])
        res.update(_time("gpu", gpu_only.render, n))
    return res


def _time(key: str, fn, n: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    walls, cpus = [], []
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    # process_time ticks coarsely on some kernels: the mean over n is the figure.
    return {f"{key}_wall_us": statistics.median(walls) * 1e6,
            f"{key}_cpu_us": statistics.fmean(cpus) * 1e6}


def _run_child(tree: Path, what: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", what, "--n", str(args.n),
         "--gpu-replay", "" if args.real_nvml else str(args.gpu_replay)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{what} in {tree} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="a source tree to measure (twice or more; the first is the baseline)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (each tree once per round)")
    p.add_argument("--n", type=int, default=300, help="scrapes per median")
    p.add_argument("--gpu-replay", default=str(DEFAULT_REPLAY), help="NVML dump to replay")
    p.add_argument("--real-nvml", action="store_true", help="read the GPUs, not a replay")
    p.add_argument("--no-rss", action="store_true", help="skip the agent-process RSS")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", choices=["scrape", "rss"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res = (_child_scrape(args.n, args.gpu_replay) if args.child == "scrape"
               else loaded_agent_memory(args.gpu_replay))
        print(json.dumps(res))
        return 0
    trees = [(name, Path(d).resolve()) for name, _, d in (t.partition("=") for t in args.tree)]
    if len(trees) < 2 or any(not (d / "sentinel").is_dir() for _, d in trees):
        p.error("give at least two --tree NAME=DIR, each a directory holding sentinel/")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        for name, d in order:
            res = _run_child(d, "scrape", args)
            if not args.no_rss:
                res.update(_run_child(d, "rss", args))
            runs[name].append(res)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
                  flush=True)
    report = _report(trees, runs)
    if args.out:
        Path(args.out).write_text(json.dumps({"rounds": runs, "summary": report}, indent=1))
    return 0


def _report(trees: list[tuple[str, Path]], runs: dict[str, list[dict[str, float]]]) -> dict:
    """Print medians per tree and the median per-round ratio of each tree to the first."""
    base = trees[0][0]
    keys = list(runs[base][0])
    summary: dict[str, dict[str, float]] = {}
    width = max(18, *(len(n) + len(base) + 3 for n, _ in trees))
    kw = max(14, *map(len, keys))
    print(f"\n{'measure':{kw}s}" + "".join(f"{n:>{width}s}" for n, _ in trees)
          + "".join(f"{n + '/' + base:>{width}s}" for n, _ in trees[1:]))
    for k in keys:
        meds = {n: statistics.median(r[k] for r in runs[n]) for n, _ in trees}
        ratios = {n: statistics.median(a[k] / b[k] for a, b in zip(runs[n], runs[base],
                                                                     strict=True))
                  for n, _ in trees[1:]}
        summary[k] = {**meds, **{f"{n}/{base}": v for n, v in ratios.items()}}
        print(f"{k:{kw}s}" + "".join(f"{meds[n]:{width}.1f}" for n, _ in trees)
              + "".join(f"{ratios[n]:{width}.3f}" for n, _ in trees[1:]))
    return summary


if __name__ == "__main__":
    sys.exit(main())
