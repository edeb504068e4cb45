"""Issue 13, item 5: the documented deployment starts.

The README and the unit say to put ``SENTINEL_AGENT_ARGS`` in /etc/default/sentinel-agent.
systemd exports every variable of that EnvironmentFile into the agent's environment and
splits an unquoted ``$SENTINEL_AGENT_ARGS`` on ExecStart into words. On main the config
loader refused ``SENTINEL_AGENT_ARGS`` as an unknown key: exit 2, restarted for ever.
This test runs the unit's ExecStart line as systemd would, with that environment.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.services import free_port

pytestmark = pytest.mark.adversarial

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "sentinel-agent.service"
INSTALLED = "/usr/local/bin/sentinel"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Return the unit's [Service] settings (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def read_environment_file(text: str) -> dict[str, str]:
    """Parse an EnvironmentFile as systemd.exec(5) does for the forms people write."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """Expand ExecStart: an unquoted ``$VAR`` word becomes its whitespace-split words."""
    argv = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            argv += env.get(m.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                               lambda g: env.get(g.group(1), ""), word))
    return argv


def test_environment_file_and_execstart_start_the_agent(tmp_path: Path) -> None:
    unit = unit_settings(UNIT)
    assert any(f.lstrip("-") == "/etc/default/sentinel-agent" for f in unit["EnvironmentFile"])
    (execstart,) = unit["ExecStart"]
    assert "$SENTINEL_AGENT_ARGS" in execstart.split()

    port = free_port()
    config = tmp_path / "sentinel.yml"
    # One file for every part, as a site keeps it: the agent reads its section only.
    config.write_text(f"agent:\n  listen_address: 127.0.0.1:{port}\n"
                      "notify:\n  channel: C0123\nrollback:\n  wait_s: 60\n")
    default_file = (
        "# /etc/default/sentinel-agent\n"
        f'SENTINEL_AGENT_ARGS="--config {config} --textfile-dir={tmp_path}"\n'
        "SENTINEL_AGENT_UDP=127.0.0.1:9999\n"  # the Reporter's, set node-wide
    )
    file_env = read_environment_file(default_file)
    runtime = tmp_path / "run"  # what RuntimeDirectory=sentinel creates
    runtime.mkdir()
    argv = expand_exec(execstart.replace("/run/sentinel", str(runtime)), file_env)
    assert argv[0] == INSTALLED
    argv = [sys.executable, "-m", "sentinel", *argv[1:]]
    assert f"--config={config}" in argv or str(config) in argv

    notify_path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    ns.settimeout(1)
    # systemd's environment: nothing inherited but what it sets and the file's variables.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "30000000", **file_env}
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        got = ""
        deadline = time.monotonic() + 30
        while "READY=1" not in got and time.monotonic() < deadline:
            assert proc.poll() is None, f"agent exited {proc.returncode}: {log.read_text()}"
            try:
                got += ns.recv(4096).decode() + "\n"
            except TimeoutError:
                pass
        assert "READY=1" in got, log.read_text()
        r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert r.status_code == 200
        assert (runtime / "agent.sock").exists()
        assert "SENTINEL_AGENT_ARGS" not in log.read_text()  # not even a warning
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
            ns.close()
    assert rc == 0, log.read_text()
