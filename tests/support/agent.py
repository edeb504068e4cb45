"""Run a real ``sentinel agent`` process for integration tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.services import free_port, stop, wait_http


@dataclass
class Agent:
    """A running agent: where to scrape it and where to send step reports."""

    url: str
    hostport: str
    socket_path: str
    proc: subprocess.Popen[Any]
    log_path: Path

    def log(self) -> str:
        """Return what the agent printed so far."""
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_agent(
    tmp: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[Agent]:
    """Start ``python -m sentinel agent`` on a free port with a socket in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sock = str(tmp / "agent.sock")
    log_path = tmp / "agent.log"
    args = [
        sys.executable,
        "-m",
        "sentinel",
        "agent",
        f"--listen-address=127.0.0.1:{port}",
        f"--socket={sock}",
        *(extra_args or []),
    ]
    full_env = dict(os.environ)
    full_env.update(env or {})
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20, proc=proc)
        except Exception:
            log.flush()
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
        yield Agent(
            url=f"http://127.0.0.1:{port}",
            hostport=f"127.0.0.1:{port}",
            socket_path=sock,
            proc=proc,
            log_path=log_path,
        )
    finally:
        stop(proc)
        log.close()
