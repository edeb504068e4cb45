"""Processes and ports of the local services: find a tool, pick a port, wait, stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import requests


class Unavailable(RuntimeError):
    """A service cannot run here: a tool is missing, or root is needed; says what to do."""


def find_tool(name: str, package: str) -> str:
    """Return the path of ``name`` (PATH, then /usr/sbin), or raise Unavailable with its package."""
    path = shutil.which(name)
    if path is None and os.path.exists(f"/usr/sbin/{name}"):
        path = f"/usr/sbin/{name}"
    if path is None:
        raise Unavailable(f"{name} not found: install the Debian package '{package}' "
                          f"(apt-get install {package}, or `make deps`)")
    return path


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports free on every address a moment ago."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))  # slurmctld binds every address, whatever its config says
            socks.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in socks:
            s.close()
    return ports


def wait_until(pred: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something true; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen after {timeout:.0f} s")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            r = requests.get(url, timeout=1)
            if r.status_code == 200:
                return
        except requests.RequestException as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def log_tail(path: Any, chars: int = 3000) -> str:
    """Return the end of a log file ('' if it does not exist)."""
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-chars:]
    except OSError:
        return ""
