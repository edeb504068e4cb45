"""``sentinel demo``: run the agent here with a small synthetic job reporting to it.

The agent in the foreground plus a built-in job that reports steps through the real
:class:`sentinel.train.Reporter`, so every family shows up on ``/metrics``. The job feeds
one bad batch (a loss spike at step :data:`SPIKE_STEP`); the default rules, run by the
online detector on the agent's step stream, find it and the demo prints the finding and
its updates. Without a GPU, GPU series come from the captured H100 dump shipped in the
package (``sentinel/gpu/replays``) and the output says so. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import tempfile
import threading
from pathlib import Path
from typing import Any

from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend

log = logging.getLogger(__name__)

DEMO_JOB = "demo-gpt"
REPLAY = H100_LOAD
# A 0.2 s step gives a lively step-time histogram and tokens/sec without using the CPU.
STEP_SECONDS = 0.2
# The bad batch: late enough for the detector's baseline (it learns over 20+ steps).
SPIKE_STEP = 120
SPIKE_STEPS = 3
DETECT_EVERY_S = 2.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser("demo", help="run the agent here with a synthetic training job")
    p.add_argument("--listen-address", default="127.0.0.1:9464",
                   help="HOST:PORT for the agent (default 127.0.0.1:9464)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop after this long (default: run until Ctrl-C)")
    p.add_argument("--step-seconds", type=float, default=STEP_SECONDS,
                   help=f"time between the synthetic job's steps (default {STEP_SECONDS})")
    p.set_defaults(func=run)


def _job(socket_path: str, stop: threading.Event, step_seconds: float) -> None:
    """Report a decaying loss with noise, 4 ranks, until stopped."""
    from sentinel.train.reporter import Reporter  # noqa: PLC0415

    reps = [Reporter(job=DEMO_JOB, rank=r, socket_path=socket_path, gpu_uuid=f"GPU-demo-{r}")
            for r in range(4)]
    rng = random.Random(0)  # noqa: S311 - synthetic loss noise, not security
    step = 0
    while not stop.is_set():
        base = 2.0 + 8.0 * math.exp(-step / 300.0)
        if SPIKE_STEP <= step < SPIKE_STEP + SPIKE_STEPS:
            base *= 3.0  # a corrupted batch: every rank's loss jumps
        for r, rep in enumerate(reps):
            rep.step(step, loss=base + rng.gauss(0, 0.05), tokens=8 * 2048,
                     grad_norm=1.0 + abs(rng.gauss(0, 0.2)), samples=8)
            if step % 100 == 0 and r == 0:
                rep.event("checkpoint_saved", step=step)
        step += 1
        stop.wait(step_seconds)


def _detect(base_url: str, stop: threading.Event) -> None:
    """Run the default rules on the job's step stream and print each finding's changes."""
    from sentinel.rules.online import OnlineDetector  # noqa: PLC0415
    from sentinel.rules.rulefile import load_rules  # noqa: PLC0415
    from sentinel.rules.sources import StepStream  # noqa: PLC0415

    # No Prometheus here: the step-reading rules (loss-spike) and the diagnosis run.
    detector = OnlineDetector(load_rules(), streams={DEMO_JOB: StepStream(base_url, DEMO_JOB)})
    printed: set[str] = set()  # keys printed once: later changes print as updates
    while not stop.wait(DETECT_EVERY_S):
        for f in detector.cycle():
            # A spike that recovered before a cycle saw it is new, though already resolved.
            if f.key not in printed:
                word = "finding"
            else:
                word = "resolved" if f.state == "resolved" else "update"
            printed.add(f.key)
            print(f"{word}: {f.summary}\n"
                  f"  steps {f.step_start}-{f.step_end}, severity {f.severity}, "
                  f"suggested action {f.suggested_action}", flush=True)
        for rule, err in detector.errors.items():
            log.debug("demo detector: rule %s: %s", rule, err)


def run(args: argparse.Namespace) -> int:
    """Run the agent and the synthetic job until Ctrl-C (or --seconds)."""
    from sentinel.agent.collectors.base import Context  # noqa: PLC0415
    from sentinel.agent.config import AgentConfig  # noqa: PLC0415
    from sentinel.agent.exporter import Agent  # noqa: PLC0415
    from sentinel.agent.server import HttpServer  # noqa: PLC0415
    from sentinel.gpu.nvml import Nvml, NvmlUnavailable  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="sentinel-demo-"))
    sock = str(tmp / "agent.sock")
    cfg = AgentConfig(listen_address=args.listen_address, socket=sock,
                      filesystem_paths=["/", str(tmp)])
    cfg.validate()
    ctx = Context(config=cfg)
    gpu_note = "real GPUs through NVML"
    try:
        probe = Nvml()
        probe.init()
        probe.shutdown()
    except NvmlUnavailable as e:
        if REPLAY.exists():
            ctx.nvml_backend = ReplayBackend.from_file(REPLAY)
            gpu_note = f"no NVML here ({e}); GPU series replay {REPLAY}"
        else:
            gpu_note = f"no NVML here ({e}); no GPU series"
    agent = Agent(ctx)
    agent.start()
    host, port = cfg.listen()
    server = HttpServer(host, port, agent)
    server.start()
    stop = threading.Event()
    job = threading.Thread(target=_job, args=(sock, stop, args.step_seconds), daemon=True)
    job.start()
    base = f"http://{host}:{server.address[1]}"
    detector = threading.Thread(target=_detect, args=(base, stop), daemon=True)
    detector.start()
    print(f"""sentinel demo: the agent is running on this machine.
  metrics      {base}/metrics
  health       {base}/healthz
  step stream  {base}/api/v1/steps?job={DEMO_JOB}&since=0
  socket       {sock}   (point a Reporter at it: SENTINEL_AGENT_SOCKET={sock})
  GPUs         {gpu_note}
  job          '{DEMO_JOB}': 4 ranks reporting a step every {args.step_seconds}s,
               with a bad batch at step {SPIKE_STEP} for the loss-spike detector to find
Ctrl-C stops it.""", flush=True)
    try:
        if args.seconds > 0:
            stop.wait(args.seconds)
        else:
            while not stop.is_set():
                stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        job.join(5)
        detector.join(5)
        server.stop()
        agent.close()
    return 0
