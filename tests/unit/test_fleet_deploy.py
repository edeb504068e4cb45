"""The fleet's shipped configs (deploy/fleet/) are valid for the tools that read them.

tests/integration/test_fleet.py runs them; these checks are fast and name the broken file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.services import need_binary
from tests.support.victoria import DEPLOY, PACKAGE, read_args

ROOT = Path(__file__).resolve().parents[2]
BINARIES = {"victoria-metrics": "victoria-metrics", "vmagent": "vmagent", "vmalert": "vmalert"}


def _with_local_targets(shipped: Path, tmp: Path, targets: str) -> Path:
    """Return a copy of a scrape config reading the shipped targets file of this checkout."""
    cfg = yaml.safe_load(shipped.read_text())
    job = cfg["scrape_configs"][0]
    job["file_sd_configs"][0]["files"] = [str(DEPLOY / "targets" / targets)]
    out = tmp / shipped.name
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_prometheus_shard_config_passes_promtool(tmp_path: Path) -> None:
    promtool = need_binary("promtool", "prometheus")
    cfg = _with_local_targets(DEPLOY / "prometheus-shard.yml", tmp_path, "shard-a.json")
    r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    data = yaml.safe_load(cfg.read_text())
    # The HA pair must send identical series: no external label may tell replicas apart.
    assert "external_labels" not in data["global"]
    assert data["scrape_configs"][0]["honor_labels"] is True
    assert data["remote_write"][0]["url"].endswith("/api/v1/write")


def test_vmagent_scrape_config_passes_its_dry_run(tmp_path: Path) -> None:
    vmagent = need_binary("vmagent", PACKAGE)
    cfg = _with_local_targets(DEPLOY / "vmagent-scrape.yml", tmp_path, "shard-b.json")
    r = subprocess.run([vmagent, f"-promscrape.config={cfg}", "-promscrape.config.dryRun"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    # The same scrape job as the Prometheus shards: the series must be identical.
    prom = yaml.safe_load((DEPLOY / "prometheus-shard.yml").read_text())["scrape_configs"][0]
    vma = yaml.safe_load(cfg.read_text())["scrape_configs"][0]
    assert {k: v for k, v in vma.items() if k != "file_sd_configs"} == {
        k: v for k, v in prom.items() if k != "file_sd_configs"}


def test_shipped_rules_pass_vmalert_dry_run() -> None:
    vmalert = need_binary("vmalert", PACKAGE)
    r = subprocess.run([vmalert, "-dryRun", f"-rule={ROOT / 'alerts' / 'sentinel.rules.yml'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(BINARIES))
def test_shipped_flags_are_known_to_their_binary(name: str) -> None:
    binary = need_binary(BINARIES[name], PACKAGE)
    args = read_args(DEPLOY / "default" / name)
    # Flags are parsed before -version is acted on: an unknown or malformed flag exits 2.
    r = subprocess.run([binary, *args, "-version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    bad = subprocess.run([binary, *args, "-no.such.flag=1", "-version"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2


def test_prometheus_shard_flags_are_known_to_prometheus() -> None:
    prometheus = need_binary("prometheus", "prometheus")
    args = read_args(DEPLOY / "default" / "prometheus")
    r = subprocess.run([prometheus, *args, "--version"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]


def test_targets_files_are_file_sd_json() -> None:
    for path in sorted((DEPLOY / "targets").glob("*.json")):
        groups = json.loads(path.read_text())
        assert isinstance(groups, list) and groups, path
        for g in groups:
            assert set(g) <= {"targets", "labels"}, path
            assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in g["targets"]), path


@pytest.mark.parametrize("unit", ["vmagent.service", "vmalert.service"])
def test_units_verify_without_warnings(tmp_path: Path, unit: str) -> None:
    analyze = need_binary("systemd-analyze", "systemd")
    text = (DEPLOY / "systemd" / unit).read_text()
    name = unit.removesuffix(".service")
    env = tmp_path / f"default-{name}"
    env.write_text(f'ARGS="{" ".join(read_args(DEPLOY / "default" / name))}"\n')
    local = tmp_path / unit
    local.write_text(text.replace(f"/etc/default/{name}", str(env)))
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(local)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 3.0, r.stdout[-500:]
