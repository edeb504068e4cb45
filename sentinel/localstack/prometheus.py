"""Prometheus and Alertmanager on 127.0.0.1, in a directory of their own, stopped by PID."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from sentinel.localstack.procs import find_tool, free_port, log_tail, stop, wait_http, wait_until


class QueryError(RuntimeError):
    """Prometheus refused a query (bad PromQL) or did not answer."""


@dataclass
class Prometheus:
    """A running Prometheus and the helpers to query it."""

    url: str
    proc: subprocess.Popen[Any]
    config_path: Path

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        except (requests.RequestException, ValueError) as e:
            raise QueryError(f"Prometheus {self.url}: {e}") from None
        if body.get("status") != "success":
            raise QueryError(f"query {params.get('query')!r} failed: {body}")
        return body["data"]["result"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query and return the result vector."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        return list(self._get("query", params))

    def query_range(self, promql: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        """Run a range query and return the result matrix."""
        return list(self._get("query_range", {"query": promql, "start": start, "end": end,
                                              "step": step}))

    def wait_for(self, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result."""
        return list(wait_until(lambda: self.query(promql), timeout, f"data for {promql!r}",
                               interval=0.5))

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
    binary: str | None = None,
    honor_labels: bool = False,
    more_scrape_configs: list[dict[str, Any]] | None = None,
) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``scrape_targets`` (host:port) on a free port.

    The scrape job is ``sentinel-agent``; ``honor_labels`` keeps the training ``job``
    label (deploy/prometheus/prometheus.yml sets it; off, Prometheus renames it
    ``exported_job``).
    """
    binary = binary or find_tool("prometheus", "prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "sentinel-agent",
                "honor_labels": honor_labels,
                "static_configs": [{"targets": scrape_targets or []}],
            },
            *(more_scrape_configs or []),
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
        # Without it an alert firing before Alertmanager is found waits a minute.
        "--rules.alert.resend-delay=1s",
        *(extra_args or []),
    ]
    log_path = tmp / "prometheus.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/-/ready", proc=proc)
        except Exception as e:
            log.flush()
            raise RuntimeError(f"Prometheus did not start: {e}\n{log_tail(log_path)}") from e
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
def run_alertmanager(tmp: Path, config_path: Path, *, binary: str | None = None
                     ) -> Iterator[Alertmanager]:
    """Start Alertmanager with ``config_path`` on a free port, clustering off."""
    binary = binary or find_tool("prometheus-alertmanager", "prometheus-alertmanager")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",  # empty: clustering off
    ]
    log_path = tmp / "alertmanager.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        try:
            wait_http(f"{url}/-/ready", proc=proc)
        except Exception as e:
            log.flush()
            raise RuntimeError(f"Alertmanager did not start: {e}\n{log_tail(log_path)}") from e
        yield Alertmanager(url=url, hostport=f"127.0.0.1:{port}", proc=proc)
    finally:
        stop(proc)
        log.close()
