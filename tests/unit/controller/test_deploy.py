"""The controller's systemd unit: verifies cleanly, is hardened, and matches the config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from sentinel.controller.config import ControllerConfig
from sentinel.notify.config import NotifyConfig
from tests.support.services import need_binary

UNIT = Path(__file__).resolve().parents[3] / "deploy" / "systemd" / "sentinel-controller.service"
# docs/DESIGN.md records the score systemd 252 gives; it must not get worse.
MAX_EXPOSURE = 2.4


def service() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_verifies_and_scores(tmp_path):
    analyze = need_binary("systemd-analyze", "systemd")
    exe = shutil.which("sentinel") or sys.executable
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace("/usr/local/bin/sentinel", exe))
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(local)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, r.stdout[-800:]


def test_unit_matches_the_controller_config():
    s = service()
    assert s["Type"] == ["notify"] and s["Restart"] == ["always"]
    assert "controller run --config=" in s["ExecStart"][0]
    cfg = ControllerConfig()
    # Fed once a cycle: the interval plus a cycle in which several Slurm calls time out.
    assert int(s["WatchdogSec"][0]) >= cfg.interval_seconds + 4 * cfg.slurm_timeout_seconds
    # The journal and the Slack outbox live in the state directory, group sentinel, 0660.
    state = Path("/var/lib") / s["StateDirectory"][0]
    assert Path(cfg.journal).parent == state
    assert Path(NotifyConfig().queue_dir).parent == state
    assert s["Group"] == ["sentinel"] and s["UMask"] == ["0007"]
    assert s["StateDirectoryMode"] == ["2770"]

