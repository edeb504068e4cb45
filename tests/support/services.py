"""Start real services (Prometheus, Alertmanager, the agent) on 127.0.0.1 for tests.

The services themselves start from the package (:mod:`sentinel.localstack`, which
``sentinel demo`` uses too); this module adds what a test needs: in CI (``CI=true``) a
missing binary is a failure; elsewhere the test is skipped with the package to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.localstack import prometheus as _prom
from sentinel.localstack.procs import Unavailable, free_port, stop, wait_http
from sentinel.localstack.prometheus import Alertmanager, Prometheus

__all__ = ["IN_CI", "Alertmanager", "Prometheus", "free_port", "need_binary", "need_tool",
           "run_alertmanager", "run_prometheus", "stop", "wait_http"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str) -> None:
    """Skip the test naming what to install, or fail in CI."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def need_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or skip (fail in CI) naming the package to install."""
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} not found: install the Debian package '{package}' "
                f"(apt-get install {package})")
    raise AssertionError("unreachable")  # pytest.skip/fail raise


@contextlib.contextmanager
def need_tool() -> Iterator[None]:
    """Turn the package's Unavailable (a tool missing, root needed) into a skip or CI failure."""
    try:
        yield
    except Unavailable as e:
        unavailable(str(e))


@contextlib.contextmanager
def run_prometheus(tmp: Path, scrape_targets: list[str] | None = None, **kw: Any
                   ) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``scrape_targets`` (host:port) on a free port."""
    binary = need_binary("prometheus", "prometheus")
    with _prom.run_prometheus(tmp, scrape_targets, binary=binary, **kw) as p:
        yield p


def alertmanager_config(tmp: Path, webhook_url: str) -> Path:
    """Write the shipped Alertmanager config with its Slack URL file and a test's waits."""
    alerts = Path(__file__).resolve().parents[2] / "alerts"
    cfg = yaml.safe_load((alerts / "alertmanager.yml").read_text())
    url_file = tmp / "slack-webhook-url"
    url_file.write_text(webhook_url + "\n")
    cfg["receivers"][0]["slack_configs"][0]["api_url_file"] = str(url_file)
    cfg["templates"] = [str(alerts / "templates" / "*.tmpl")]
    cfg["route"].update(group_wait="1s", group_interval="1s")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@contextlib.contextmanager
def run_alertmanager(tmp: Path, config_path: Path) -> Iterator[Alertmanager]:
    """Start Alertmanager with ``config_path`` on a free port, clustering off."""
    binary = need_binary("prometheus-alertmanager", "prometheus-alertmanager")
    with _prom.run_alertmanager(tmp, config_path, binary=binary) as a:
        yield a
