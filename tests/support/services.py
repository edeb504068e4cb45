"""Start real services (Prometheus, Alertmanager, the agent) on 127.0.0.1 for tests.

Every process is started in a temporary directory and stopped by its PID. In CI
(``CI=true``) a missing binary is a failure; elsewhere the test is skipped with the
package to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or skip (fail in CI) naming the package to install."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found: install the Debian package '{package}' (apt-get install {package})"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200 or raise with the process's output."""
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


@dataclass
class Prometheus:
    """A running Prometheus and the helpers to query it."""

    url: str
    proc: subprocess.Popen[Any]
    config_path: Path

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query and return the result vector (raises on error)."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        r = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if res:
                return res
            if time.monotonic() > deadline:
                raise TimeoutError(f"no data for {promql!r} after {timeout}s")
            time.sleep(0.5)

    def reload(self) -> None:
        """Reload the config file (needs --web.enable-lifecycle)."""
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()


@contextlib.contextmanager
def run_prometheus(
    tmp: Path,
    scrape_targets: list[str] | None = None,
    *,
    scrape_interval: str = "1s",
    rule_files: list[str] | None = None,
    alertmanager: str | None = None,
    extra_config: dict[str, Any] | None = None,
    extra_args: list[str] | None = None,
    tsdb_path: Path | None = None,
) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``scrape_targets`` (host:port) on a free port."""
    binary = need_binary("prometheus", "prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "sentinel-agent",
                "static_configs": [{"targets": scrape_targets or []}],
            }
        ],
    }
    if rule_files:
        cfg["rule_files"] = rule_files
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    if extra_config:
        cfg.update(extra_config)
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tsdb_path or tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--rules.alert.resend-delay=1s",
        *(extra_args or []),
    ]
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/-/ready", proc=proc)
        except Exception:
            log.flush()
            sys.stderr.write((tmp / "prometheus.log").read_text()[-4000:])
            raise
        yield Prometheus(url=url, proc=proc, config_path=config_path)
    finally:
        stop(proc)
        log.close()


@dataclass
class Alertmanager:
    """A running Alertmanager."""

    url: str
    hostport: str
    proc: subprocess.Popen[Any]


@contextlib.contextmanager
def run_alertmanager(tmp: Path, config_path: Path) -> Iterator[Alertmanager]:
    """Start Alertmanager with ``config_path`` on a free port, clustering off."""
    binary = need_binary("prometheus-alertmanager", "prometheus-alertmanager")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",
    ]
    log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(f"{url}/-/ready", proc=proc)
        except Exception:
            log.flush()
            sys.stderr.write((tmp / "alertmanager.log").read_text()[-4000:])
            raise
        yield Alertmanager(url=url, hostport=f"127.0.0.1:{port}", proc=proc)
    finally:
        stop(proc)
        log.close()
