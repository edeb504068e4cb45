"""Start the fleet's parts (VictoriaMetrics, vmagent, vmalert, Prometheus shards) for tests.

Every part starts from the configuration shipped in deploy/fleet/: the flags of an
``/etc/default/NAME`` file (its ``ARGS="..."``) and the YAML scrape configs. A test
replaces only what must differ on a test machine (ports, paths, URLs, intervals), and
only flags and keys that the shipped file has: a shipped file that loses or renames one
fails the test instead of being silently bypassed. Processes run on 127.0.0.1 in a
temporary directory and are stopped by PID.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.services import (
    Prometheus,
    free_port,
    need_binary,
    run_prometheus,
    stop,
    wait_http,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "fleet"
PACKAGE = "victoria-metrics"

_ARGS = re.compile(r'^ARGS="(.*?)"\s*$', re.MULTILINE | re.DOTALL)


def read_args(path: Path) -> list[str]:
    """Return the flags of an ``/etc/default`` file's ``ARGS="..."``, split as systemd does."""
    text = path.read_text().replace("\\\n", " ")
    m = _ARGS.search(text)
    if not m:
        raise ValueError(f'{path}: no ARGS="..." line')
    return shlex.split(m.group(1))


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def set_flags(args: list[str], values: dict[str, str]) -> list[str]:
    """Replace the value of each flag named in ``values`` (``-name`` or ``--name``).

    Raises if a flag is not among ``args``: the test must not invent configuration the
    shipped file lacks.
    """
    names = [_flag_name(a) for a in args]
    missing = [f for f in values if f not in names]
    if missing:
        raise AssertionError(f"flags {missing} are not in the shipped flags {names}")
    return [f"{_flag_name(a)}={values[_flag_name(a)]}" if _flag_name(a) in values else a
            for a in args]


def drop_flags(args: list[str], names: set[str]) -> list[str]:
    """Return ``args`` without the flags in ``names`` (all must be present)."""
    present = {_flag_name(a) for a in args}
    if not names <= present:
        raise AssertionError(f"flags {sorted(names - present)} are not in {sorted(present)}")
    return [a for a in args if _flag_name(a) not in names]


def file_sd(config: dict[str, Any], targets_file: Path) -> None:
    """Point the ``sentinel-agent`` job's file_sd at ``targets_file`` (it must use file_sd)."""
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "sentinel-agent")
    sd = job["file_sd_configs"]
    assert len(sd) == 1 and len(sd[0]["files"]) == 1, sd
    sd[0]["files"] = [str(targets_file)]


def write_targets(path: Path, targets: list[str]) -> Path:
    """Write a file_sd targets file in the shipped format and labels (deploy/fleet/targets/)."""
    shipped = json.loads((DEPLOY / "targets" / "shard-a.json").read_text())
    group = copy.deepcopy(shipped[0])
    group["targets"] = targets
    path.write_text(json.dumps([group]))
    return path


def shard_config(shipped: Path, targets_file: Path, scrape_interval: str,
                 remote_write: str | None = None) -> dict[str, Any]:
    """Return a shipped scrape config with the test's targets, interval and store URL."""
    cfg = yaml.safe_load(shipped.read_text())
    assert "scrape_interval" in cfg["global"], f"{shipped}: no global.scrape_interval"
    cfg["global"]["scrape_interval"] = scrape_interval
    cfg["global"]["scrape_timeout"] = scrape_interval
    file_sd(cfg, targets_file)
    if remote_write is not None:
        assert len(cfg["remote_write"]) == 1, f"{shipped}: expected one remote_write"
        cfg["remote_write"][0]["url"] = remote_write
        # A test cannot wait the shipped 5 s per batch.
        cfg["remote_write"][0]["queue_config"]["batch_send_deadline"] = "500ms"
    return cfg


@dataclass
class VictoriaMetrics(Prometheus):
    """A running single-node VictoriaMetrics: its Prometheus API, and its own helpers.

    ``config_path`` is the file holding the flags it was started with.
    """

    data_path: Path = Path()

    def write_url(self) -> str:
        """Return the remote-write endpoint (Prometheus and vmagent send here)."""
        return f"{self.url}/api/v1/write"

    def import_prometheus(self, text: str) -> None:
        """Import samples in the Prometheus text format (timestamps in milliseconds)."""
        r = requests.post(f"{self.url}/api/v1/import/prometheus", data=text.encode(),
                          timeout=60)
        if r.status_code != 204:
            raise AssertionError(f"import failed: HTTP {r.status_code}: {r.text[:500]}")

    def flush(self) -> None:
        """Make everything received so far visible to queries at once."""
        requests.get(f"{self.url}/internal/force_flush", timeout=60).raise_for_status()


@dataclass
class Service:
    """A running VictoriaMetrics-family process (vmagent, vmalert)."""

    url: str
    proc: subprocess.Popen[Any]
    args: list[str]
    log_path: Path

    def log(self) -> str:
        """Return what the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """Return the sum of a metric's samples on the process's own /metrics page."""
        return metric_sum(self.url, name)


def metric_sum(url: str, name: str) -> float:
    """Return the sum of a metric's samples on a process's own ``URL/metrics`` page."""
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def _run(tmp: Path, name: str, argv: list[str], ready_url: str,
         ready_timeout: float = 20.0) -> Iterator[Service]:
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"{name}.log"
    (tmp / f"{name}.args").write_text("\n".join(argv) + "\n")
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(ready_url, timeout=ready_timeout, proc=proc)
        except Exception:
            log.flush()
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
        yield Service(url=ready_url.rsplit("/", 1)[0], proc=proc, args=argv, log_path=log_path)
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def run_victoria_metrics(tmp: Path, dedup_interval: str = "1s",
                         data_path: Path | None = None,
                         extra: dict[str, str] | None = None,
                         add: list[str] | None = None,
                         ready_timeout: float = 20.0) -> Iterator[VictoriaMetrics]:
    """Start VictoriaMetrics with the shipped flags (deploy/fleet/default/victoria-metrics).

    Data becomes visible at once (``-search.latencyOffset=0s``) and HA duplicates are
    merged per ``dedup_interval`` (the test's scrape interval). ``extra`` replaces more
    shipped flags; ``add`` appends flags the shipped file does not have (a benchmark's
    measurement settings, never a test's configuration).
    """
    binary = need_binary("victoria-metrics", PACKAGE)
    port = free_port()
    data = data_path or tmp / "vmdata"
    args = set_flags(read_args(DEPLOY / "default" / "victoria-metrics"), {
        "-storageDataPath": str(data),
        "-httpListenAddr": f"127.0.0.1:{port}",
        "-dedup.minScrapeInterval": dedup_interval,
        "-search.latencyOffset": "0s",
        **(extra or {}),
    })
    url = f"http://127.0.0.1:{port}"
    with _run(tmp, "victoria-metrics", [binary, *args, *(add or [])], f"{url}/health",
              ready_timeout) as svc:
        yield VictoriaMetrics(url=url, proc=svc.proc, config_path=tmp / "victoria-metrics.args",
                              data_path=data)


@contextlib.contextmanager
def run_vmagent(tmp: Path, targets: list[str], remote_write: str,
                scrape_interval: str = "1s") -> Iterator[Service]:
    """Start a vmagent shard (deploy/fleet/vmagent-scrape.yml and default/vmagent)."""
    binary = need_binary("vmagent", PACKAGE)
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = shard_config(DEPLOY / "vmagent-scrape.yml", write_targets(tmp / "targets.json", targets),
                       scrape_interval)
    cfg_path = tmp / "vmagent-scrape.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    args = set_flags(read_args(DEPLOY / "default" / "vmagent"), {
        "-promscrape.config": str(cfg_path),
        "-remoteWrite.url": remote_write,
        "-remoteWrite.tmpDataPath": str(tmp / "remotewrite-data"),
        "-httpListenAddr": f"127.0.0.1:{port}",
    })
    with _run(tmp, "vmagent", [binary, *args], f"http://127.0.0.1:{port}/health") as svc:
        yield svc


@contextlib.contextmanager
def run_vmalert(tmp: Path, rule_files: list[Path], store: str, alertmanager: str,
                evaluation_interval: str = "1s") -> Iterator[Service]:
    """Start vmalert with the shipped flags (deploy/fleet/default/vmalert) against ``store``."""
    binary = need_binary("vmalert", PACKAGE)
    port = free_port()
    args = set_flags(read_args(DEPLOY / "default" / "vmalert"), {
        "-rule": ",".join(str(p) for p in rule_files),
        "-datasource.url": store,
        "-remoteWrite.url": store,
        "-remoteRead.url": store,
        "-notifier.url": alertmanager,
        "-evaluationInterval": evaluation_interval,
        "-external.url": f"http://127.0.0.1:{port}",
        "-httpListenAddr": f"127.0.0.1:{port}",
    })
    with _run(tmp, "vmalert", [binary, *args], f"http://127.0.0.1:{port}/health") as svc:
        yield svc


@contextlib.contextmanager
def run_prometheus_shard(tmp: Path, targets: list[str], remote_write: str,
                         scrape_interval: str = "1s") -> Iterator[Prometheus]:
    """Start one Prometheus of a shard (deploy/fleet/prometheus-shard.yml, default/prometheus).

    An HA pair is two of these with the same targets.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = shard_config(DEPLOY / "prometheus-shard.yml",
                       write_targets(tmp / "targets.json", targets), scrape_interval,
                       remote_write)
    # run_prometheus sets the config file, data path and listen address itself.
    flags = drop_flags(read_args(DEPLOY / "default" / "prometheus"),
                       {"--config.file", "--storage.tsdb.path", "--web.listen-address"})
    with run_prometheus(tmp, extra_config=cfg, extra_args=flags) as prom:
        yield prom
