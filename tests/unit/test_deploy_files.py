"""docs/DEPLOY.md and deploy/: every path it names exists, every file is checked.

The checks of files no other test owns live here (the file_sd units, the shipped
Prometheus config, the agent's and the Slurm hooks' defaults files, the sysctl file);
the table at the end of DEPLOY.md names the test of each file, and a test here keeps
that table true.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentinel.cli import build_parser
from sentinel.deploy import (
    DEFAULT_TEXTFILE,
    file_sd_groups,
    healthcheck_reason,
    write_file_sd,
)
from sentinel.preflight.config import load_setup
from tests.support.services import need_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_MD = ROOT / "docs" / "DEPLOY.md"
DEPLOY = ROOT / "deploy"
# A repository path in prose, a table or a shell line.
PATH_RE = re.compile(r"(?<![\w/.-])((?:deploy|alerts|docs|dashboards|tests|sentinel|examples)"
                     r"/[\w./\-]*)")


def named_paths(text: str) -> set[str]:
    return {m.group(1).rstrip(".,:)") for m in PATH_RE.finditer(text)}


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(files, test files) of each row of DEPLOY.md's "Files and their checks" table."""
    text = DEPLOY_MD.read_text().split("## Files and their checks", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("file", "---"):
            continue
        files = re.findall(r"`([^`]+)`", cells[0])
        tests = [p for p in named_paths(cells[2]) if p.startswith("tests/")]
        rows.append((files, tests))
    return rows


def test_every_path_deploy_md_names_exists():
    paths = named_paths(DEPLOY_MD.read_text())
    assert "deploy/slurm/sentinel-healthcheck" in paths  # the scan finds shell lines too
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_every_deploy_file_is_documented_and_its_test_names_it():
    rows = table_rows()
    assert rows, "no rows found in DEPLOY.md's table"
    documented = {f for files, _ in rows for f in files}
    shipped = {str(p.relative_to(ROOT)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert shipped - documented == set(), "deploy/ files DEPLOY.md does not list"
    for files, tests in rows:
        assert tests, f"no test named for {files}"
        texts = [(ROOT / t).read_text() for t in tests]  # each named test file exists
        for f in files:
            if f.startswith("deploy/"):
                # The test that checks a file refers to it (its name, or its folder).
                name = Path(f).name
                assert any(name in t for t in texts), f"{f}: not in {tests}"


def test_grafana_readme_paths_exist():
    text = (DEPLOY / "grafana" / "README.md").read_text()
    paths = named_paths(text)
    assert "deploy/grafana/provisioning/datasources/sentinel.yml" in paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def test_fleet_readme_paths_and_files_exist():
    text = (DEPLOY / "fleet" / "README.md").read_text()
    paths = named_paths(text)
    assert "tests/integration/test_fleet.py" in paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
    # Its own table names files relative to deploy/fleet/; each one exists.
    listed = {f for f in re.findall(r"`([\w./*-]+)`", text)
              if "/" in f or f.endswith((".yml", ".json"))}
    for name in listed:
        if name.startswith("/") or name.split("/")[0] in ("alerts", "tests", "docs", "deploy"):
            continue
        assert list((DEPLOY / "fleet").glob(name)), f"deploy/fleet/README.md names {name}"


# -- systemd: the file_sd service and its timer ------------------------------------------

def test_file_sd_units_verify_and_are_hardened(tmp_path):
    analyze = need_binary("systemd-analyze", "systemd")
    exe = shutil.which("sentinel") or sys.executable
    for name in ("sentinel-file-sd.service", "sentinel-file-sd.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/sentinel", exe))
    r = subprocess.run([analyze, "verify", str(tmp_path / "sentinel-file-sd.service"),
                        str(tmp_path / "sentinel-file-sd.timer")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([analyze, "security", "--offline=true",
                        str(tmp_path / "sentinel-file-sd.service")], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-500:]


def test_file_sd_service_writes_where_prometheus_reads():
    unit = (DEPLOY / "systemd" / "sentinel-file-sd.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.split("=", 1)[1])
    args = build_parser().parse_args(argv[1:])  # the flags are sentinel's
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [agents] = [s for s in prom["scrape_configs"] if s["job_name"] == "sentinel-agent"]
    assert agents["honor_labels"] is True
    assert agents["file_sd_configs"][0]["files"] == [args.out]
    # The state directory the unit creates is the file's folder.
    state = re.search(r"^StateDirectory=(\S+)$", unit, re.M).group(1)
    assert Path(args.out).parent == Path("/var/lib") / state
    timer = (DEPLOY / "systemd" / "sentinel-file-sd.timer").read_text()
    assert "OnUnitActiveSec=" in timer and "WantedBy=timers.target" in timer


# -- Prometheus ----------------------------------------------------------------------------

def test_shipped_prometheus_config_passes_promtool(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    # Its absolute paths pointed at this repository's rules and a generated target list.
    targets = tmp_path / "sentinel-agents.json"
    assert write_file_sd(targets, file_sd_groups({"node1": _node("node1", "10.0.0.1")}, 9464))
    cfg["rule_files"] = [str(ROOT / "alerts" / "sentinel.rules.yml")]
    [agents] = [s for s in cfg["scrape_configs"] if s["job_name"] == "sentinel-agent"]
    agents["file_sd_configs"][0]["files"] = [str(targets)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "rules found" in r.stdout
    agents["scrape_timeout"] = "20s"  # longer than the interval: promtool must refuse it
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0


def _node(name: str, address: str, hostname: str = "", partitions=("gpu",)):
    from sentinel.controller.slurm import Node

    return Node(name=name, state="IDLE", address=address, hostname=hostname or name,
                partitions=tuple(partitions))


def test_file_sd_groups_per_node_and_address():
    nodes = {"gpu2": _node("gpu2", "10.0.0.2", "gpu2.cluster"),
             "gpu1": _node("gpu1", "fe80::1", partitions=("gpu", "spares"))}
    groups = file_sd_groups(nodes, 9464, labels={"cluster": "a"})
    assert groups == [
        {"targets": ["[fe80::1]:9464"], "labels": {"cluster": "a", "slurm_node": "gpu1"}},
        {"targets": ["10.0.0.2:9464"], "labels": {"cluster": "a", "slurm_node": "gpu2"}}]
    assert [g["targets"] for g in file_sd_groups(nodes, 1, "hostname")] == [
        ["gpu1:1"], ["gpu2.cluster:1"]]
    assert [g["labels"]["slurm_node"] for g in file_sd_groups(nodes, 1, "name",
                                                              ["spares"])] == ["gpu1"]


# -- the agent's defaults, sysctl ---------------------------------------------------------

def _shell_vars(path: Path) -> dict[str, str]:
    out = subprocess.run(["sh", "-c", f'set -a; . "{path}"; env'], capture_output=True,
                         text=True, timeout=10, check=True, env={}).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_agent_defaults_file_gives_flags_sentinel_agent_takes():
    unit = (DEPLOY / "systemd" / "sentinel-agent.service").read_text()
    assert "EnvironmentFile=-/etc/default/sentinel-agent" in unit
    assert "$SENTINEL_AGENT_ARGS" in unit
    args = _shell_vars(DEPLOY / "default" / "sentinel-agent")["SENTINEL_AGENT_ARGS"].split()
    ns = build_parser().parse_args(["agent", *args])
    # The config it names is the shipped one's place, and its textfile directory is where
    # the shipped config's burn-in writes (the agent exports what burn-in wrote).
    assert ns.config == "/etc/sentinel/sentinel.yml"
    shipped = yaml.safe_load((DEPLOY / "sentinel.yml").read_text())
    assert Path(shipped["burnin"]["textfile"]).parent == Path(ns.textfile_dir)
    assert shipped["burnin"]["textfile"] == DEFAULT_TEXTFILE
    setup = load_setup(str(DEPLOY / "sentinel.yml"))
    assert setup.sections["agent"].textfile_dir == ns.textfile_dir


def test_sysctl_key_exists_and_covers_the_ranks_of_a_node():
    lines = [ln for ln in (DEPLOY / "sysctl" / "90-sentinel.conf").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    [(key, value)] = [tuple(p.strip() for p in ln.split("=", 1)) for ln in lines]
    assert Path("/proc/sys", *key.split(".")).exists(), key  # a key this kernel has
    assert int(value) >= 512


# -- the Slurm hooks' defaults -----------------------------------------------------------

@pytest.mark.parametrize("hook", ["sentinel-healthcheck", "sentinel-prolog"])
def test_slurm_hooks_parse_and_their_defaults_match_the_shipped_ones(hook):
    script = DEPLOY / "slurm" / hook
    assert script.stat().st_mode & 0o111, f"{hook} is not executable"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    text = script.read_text()
    assert f"SENTINEL_TEXTFILE={DEFAULT_TEXTFILE}" in text
    assert "DEFAULTS=/etc/default/sentinel-slurm" in text
    # The defaults file only documents: sourced, it changes nothing.
    assert set(_shell_vars(DEPLOY / "default" / "sentinel-slurm")) <= {"PWD", "SHLVL", "_"}
    for line in (DEPLOY / "default" / "sentinel-slurm").read_text().splitlines():
        if line.startswith("#SENTINEL"):
            key, value = line[1:].split("=", 1)
            assert f"{key}={value}" in text, f"{hook}: default {key} differs"


def test_healthcheck_reason_is_ours_and_says_which_gpus():
    from sentinel.burnin.report import TextfileGpu
    from sentinel.controller.slurm import BURNIN_FAILED_PREFIX, REASON_MAX

    gpus = [TextfileGpu("3", "GPU-x", "n1", False, "LOW_FLOPS", 1795959309.0),
            TextfileGpu("5", "GPU-y", "n1", False, "THROTTLED", None)]
    reason = healthcheck_reason(gpus, 1795959309.0)
    assert reason.startswith(f"{BURNIN_FAILED_PREFIX}: GPU 3 LOW_FLOPS, GPU 5 THROTTLED [")
    assert reason.endswith("[healthcheck, burn-in of 2026-11-29 13:35 UTC]")
    assert len(healthcheck_reason(gpus * 40, None)) <= REASON_MAX
