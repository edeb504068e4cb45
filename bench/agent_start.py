"""Start the agent for the agent benches: in this process, or as a real process.

Shared by ``bench/agent_overhead.py`` and ``bench/agent_ab.py`` (which runs it against
other source trees: whichever ``sentinel`` PYTHONPATH gives, so only long-standing agent
APIs are used here).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

AGENT_START_S = 60  # a real agent process answers /metrics within this


def replay_backend(path: str | None) -> Any:
    """Return the NVML replay backend of a captured dump (None: read the GPUs)."""
    if not path:
        return None
    try:
        from sentinel.gpu.nvml_replay import ReplayBackend
    except ImportError:  # trees before the sentinel/gpu package
        from sentinel.agent.nvml_replay import ReplayBackend  # type: ignore[no-redef]
    return ReplayBackend.from_file(path)


@contextlib.contextmanager
def in_process_agent(replay: str | None, **config: Any) -> Iterator[Any]:
    """Yield a started Agent with the default collectors (``config`` overrides)."""
    from sentinel.agent.collectors.base import Context
    from sentinel.agent.config import AgentConfig
    from sentinel.agent.exporter import Agent

    tmp = tempfile.mkdtemp()
    cfg = AgentConfig(socket=os.path.join(tmp, "a.sock"), **config)
    agent = Agent(Context(config=cfg, nvml_backend=replay_backend(replay)))
    agent.start()
    try:
        body = agent.render()
        if b"sentinel_gpu_nvml_available" not in body:
            raise SystemExit("the scrape has no gpu collector output")
        yield agent
    finally:
        agent.close()


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def agent_process(replay: str | None = None, *args: str) -> Iterator[tuple[Any, str, str]]:
    """Yield (process, metrics URL, report socket path) of a real ``sentinel agent``."""
    import requests

    tmp = tempfile.mkdtemp()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "agent", f"--listen-address=127.0.0.1:{port}",
         f"--socket={tmp}/a.sock", *([f"--gpu-replay={replay}"] if replay else []), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + AGENT_START_S
        while True:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield proc, url, f"{tmp}/a.sock"
    finally:
        proc.terminate()
        proc.wait(10)


def loaded_agent_memory(replay: str | None = None) -> dict[str, float]:
    """Start a real agent, report 2000 steps, scrape it 20 times; return its memory."""
    import psutil
    import requests

    from sentinel.train.reporter import Reporter

    with agent_process(replay) as (proc, url, sock):
        rep = Reporter(job="bench", socket_path=sock)
        for i in range(2000):
            rep.step(i, loss=1.0, tokens=1000)
            if i % 100 == 0:
                time.sleep(0.005)  # the kernel's datagram queue may be 10 deep here
        for _ in range(20):
            requests.get(url, timeout=10).raise_for_status()
        p = psutil.Process(proc.pid)
        return {"rss_mb": p.memory_info().rss / 2**20, "uss_mb": p.memory_full_info().uss / 2**20,
                "threads": float(p.num_threads())}
