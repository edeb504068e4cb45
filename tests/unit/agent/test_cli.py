"""``sentinel agent`` through the real CLI: config errors, --once, flags, golden scrape."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinel.gpu.nvml_replay import H100_LOAD
from tests.support.collectors import FIXTURES, PROC, make_ctx, render_collector
from tests.support.metrics import check_promtool, samples, value
from tests.support.services import need_binary

GOLDEN = FIXTURES / "agent" / "golden.prom"
TEXTFILES = FIXTURES / "agent" / "textfile"


def agent(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "sentinel", "agent", *args], capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.mark.parametrize(
    ("yaml_text", "env", "flags", "expect"),
    [
        ("agent:\n  max_jobs: 0\n", {}, [], r"agent\.max_jobs: 0 is below the minimum 1"),
        ("agent:\n  colour: red\n", {}, [], r"agent\.colour: unknown key \(valid keys: .*max_jobs"),
        ("agent:\n  collectors: [gpu, fan]\n", {}, [],
         r"'fan' is not valid \(valid: gpu, disk, disk_stall, host, training, "
         r"textfile\)"),
        ("", {"SENTINEL_AGENT_RATE_WINDOW_SECONDS": "soon"}, [],
         r"SENTINEL_AGENT_RATE_WINDOW_SECONDS .*'soon' is not a number"),
        ("agent:\n  job_expiry_seconds: .nan\n", {}, [],
         r"agent\.job_expiry_seconds: nan is not a finite number"),
        ("", {}, ["--listen-address=nohost"], r"agent\.listen_address: 'nohost' is not HOST:PORT"),
        ("agent:\n  disk_exclude: '(('\n", {}, [], r"agent\.disk_exclude: '\(\(' is not a valid"),
        ("agent:\n  socket_mode: rw-rw----\n", {}, [],
         r"agent\.socket_mode: 'rw-rw----' is not an octal file mode \(valid: e\.g\. '0660'"),
        ("agent:\n  socket_group: no-such-group-here\n", {}, [],
         r"agent\.socket_group: no group 'no-such-group-here' on this machine \(valid: "),
        ("", {"SENTINEL_AGENT_REPORT_ALLOW_GROUPS": "wheel2x,nope-group"}, [],
         r"agent\.report_allow_groups: no group 'wheel2x'"),
        ("", {"SENTINEL_AGENT_REPORT_ALLOW_UIDS": "1000,bob"}, [],
         r"SENTINEL_AGENT_REPORT_ALLOW_UIDS \(agent\.report_allow_uids\)\[1\]: 'bob' is not an"),
        ("agent:\n  step_ring_size: 1000000\n  max_jobs: 16\n", {}, [],
         r"agent\.step_ring_size x agent\.max_jobs: 1000000 x 16 records of \d+ bytes take "
         r"\d+ MiB, more than the 64 MiB"),
        ("", {}, ["--udp-address=0.0.0.0:9999"],
         r"agent\.udp_address: '0\.0\.0\.0:9999' is not a loopback address.*udp_allow_remote"),
    ],
)
def test_bad_config_exits_2_naming_key_value_and_valid(tmp_path, yaml_text, env, flags, expect):
    cfg = tmp_path / "sentinel.yml"
    cfg.write_text(yaml_text)
    r = agent(f"--config={cfg}", "--once", *flags, env=env)
    assert r.returncode == 2, r.stderr
    assert re.search(expect, r.stderr), r.stderr


def test_bad_replay_file_exits_2(tmp_path):
    r = agent("--once", f"--gpu-replay={tmp_path / 'none.json'}")
    assert r.returncode == 2
    assert "agent.gpu_replay" in r.stderr and "cannot read" in r.stderr


def test_collector_flags_select_collectors(tmp_path):
    r = agent("--once", f"--procfs={PROC}", "--no-collector.gpu", "--no-collector.host",
              "--no-collector.training", "--no-collector.disk_stall",
              f"--socket={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    got = {dict(ls)["collector"] for (n, ls) in samples(r.stdout)
           if n == "sentinel_collector_success"}
    assert got == {"disk", "textfile"}


def once_fixture_scrape(tmp_path: Path) -> str:
    cfg = tmp_path / "sentinel.yml"
    cfg.write_text("agent:\n  hostname: node1\n  filesystem_paths: ['/']\n")
    r = agent(f"--config={cfg}", "--once", f"--procfs={PROC}",
              f"--gpu-replay={H100_LOAD}", f"--textfile-dir={TEXTFILES}",
              f"--socket={tmp_path / 'agent.sock'}")
    assert r.returncode == 0, r.stderr
    return r.stdout


def normalise(text: str) -> str:
    """Blank what depends on the moment: timings, free space, file mtimes."""
    out = []
    for line in text.splitlines():
        if re.match(r"(sentinel_collector_duration_seconds|sentinel_host_filesystem_|"
                    r"sentinel_textfile_mtime_seconds|sentinel_agent_info)\w*\{", line):
            line = line.rsplit(" ", 1)[0] + " <varies>"
        out.append(line)
    return "\n".join(out) + "\n"


def test_golden_scrape_matches_and_passes_promtool(tmp_path):
    text = once_fixture_scrape(tmp_path)
    if os.environ.get("SENTINEL_UPDATE_GOLDEN"):
        GOLDEN.write_text(normalise(text))
    assert normalise(text) == GOLDEN.read_text()
    check_promtool(text)


def test_bad_textfile_fails_only_the_textfile_collector(tmp_path):
    d = tmp_path / "tf"
    shutil.copytree(TEXTFILES, d)
    (d / "broken.prom").write_text("this is { not prometheus\n")
    r = agent("--once", f"--procfs={PROC}", f"--textfile-dir={d}", "--no-collector.gpu",
              f"--socket={tmp_path / 's'}")
    assert r.returncode == 0
    assert value(r.stdout, "sentinel_collector_success", collector="textfile") == 0
    assert value(r.stdout, "sentinel_collector_success", collector="disk") == 1
    assert value(r.stdout, "sentinel_burnin_tflops", stat="median") == 702.5
    assert value(r.stdout, "sentinel_textfile_mtime_seconds", file="burnin.prom") > 0
    assert 'file="broken.prom"' not in r.stdout
    assert "broken.prom skipped" in r.stderr


def test_textfile_may_not_shadow_agent_metrics(tmp_path):
    from sentinel.agent.collectors.textfile import TextfileCollector

    (tmp_path / "x.prom").write_text("sentinel_collector_success{collector=\"gpu\"} 1\n")
    c = TextfileCollector(make_ctx(tmp_path, textfile_dir=str(tmp_path)))
    text = render_collector(c)
    assert not c.success
    assert "reserved" in c.errors["x.prom"]
    assert "sentinel_collector_success" not in text


def test_host_collector_reads_the_fixture_procfs(tmp_path):
    from sentinel.agent.collectors.host import HostCollector

    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    c = HostCollector(make_ctx(tmp_path, procfs=str(proc), filesystem_paths=[str(tmp_path)]))
    render_collector(c)
    # 10 s later: 4 s busy (user) of 20 s of CPU time on 2 CPUs -> 0.2
    stat = (proc / "stat").read_text().splitlines()
    f = stat[0].split()
    f[1] = str(int(f[1]) + 400)  # user, in USER_HZ (100/s)
    f[4] = str(int(f[4]) + 1600)  # idle
    stat[0] = " ".join(f)
    (proc / "stat").write_text("\n".join(stat) + "\n")
    (proc / "loadavg").write_text("3.50 2.25 1.00 2/100 999\n")
    text = render_collector(c)
    assert value(text, "sentinel_host_cpu_utilization_ratio") == pytest.approx(0.2)
    assert value(text, "sentinel_host_load_average", period="5m") == 2.25
    meminfo = dict(ln.split(":", 1) for ln in (PROC / "meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert value(text, "sentinel_host_memory_total_bytes") == total
    assert value(text, "sentinel_host_filesystem_size_bytes", path=str(tmp_path)) > 0
    assert c.success
    c.paths.append(str(tmp_path / "unmounted"))
    render_collector(c)
    assert not c.success


@pytest.mark.parametrize(
    ("interval", "watchdog_usec"),
    [("0.2", None),
     # A configured interval longer than systemd's WatchdogSec would get the agent
     # killed; it must feed at half of $WATCHDOG_USEC (0.2 s here) instead.
     ("60", "400000")],
)
def test_notify_socket_gets_ready_watchdog_and_stopping(tmp_path, interval, watchdog_usec):
    """The agent sends READY=1, then WATCHDOG=1, then STOPPING=1 on SIGTERM, as systemd expects."""
    from tests.support.services import free_port

    ns = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(ns))
    srv.settimeout(15)
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"agent:\n  watchdog_interval_seconds: {interval}\n")
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("SENTINEL_") and k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    e["NOTIFY_SOCKET"] = str(ns)
    if watchdog_usec:
        e["WATCHDOG_USEC"] = watchdog_usec
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "agent", f"--config={cfg}",
         f"--listen-address=127.0.0.1:{port}", f"--socket={tmp_path / 'a.sock'}",
         f"--procfs={PROC}", "--no-collector.gpu"], env=e,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 2:
            got.append(srv.recv(4096).decode())
        proc.terminate()
        got.append(srv.recv(4096).decode())
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.close()
    assert got[0] == f"READY=1\nSTATUS=serving http://127.0.0.1:{port}/metrics"
    assert got[1:-1] == ["WATCHDOG=1"] * (len(got) - 2) and len(got) >= 4
    assert got[-1] == "STOPPING=1"


def test_unit_file_verifies_without_warnings(tmp_path):
    analyze = need_binary("systemd-analyze", "systemd")
    unit = Path(__file__).resolve().parents[3] / "deploy" / "systemd" / "sentinel-agent.service"
    exe = shutil.which("sentinel") or sys.executable
    text = unit.read_text().replace("/usr/local/bin/sentinel", exe)
    local = tmp_path / "sentinel-agent.service"
    local.write_text(text)
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=always" in text
    # The report socket's group (agent.socket_mode 0660 leaves it to the group).
    assert re.search(r"^Group=sentinel$", text, re.M) and re.search(r"^UMask=0027$", text, re.M)
    r = subprocess.run([analyze, "security", "--offline=true", str(local)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 1.5, r.stdout[-500:]


def test_the_serving_agent_loads_no_tls_and_still_serves(tmp_path):
    """A serving agent never maps OpenSSL (asyncio without ssl: 3.6-4.5 MB of RSS less)."""
    import requests

    from tests.support.services import free_port

    port = free_port()
    e = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "agent", f"--listen-address=127.0.0.1:{port}",
         f"--socket={tmp_path / 'a.sock'}", f"--procfs={PROC}", f"--gpu-replay={H100_LOAD}"],
        env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200 and "sentinel_gpu_up{" in r.text
        assert value(r.text, "sentinel_collector_success", collector="host") == 1.0
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "_ssl." not in maps and "libssl" not in maps


def test_asyncio_without_tls_leaves_ssl_importable():
    """Hiding ssl lasts only while asyncio loads; a loaded ssl or asyncio is left alone."""
    code = (
        "import sys\n"
        "from sentinel.agent.cli import import_asyncio_without_tls as imp\n"
        "assert imp() and 'asyncio' in sys.modules and 'ssl' not in sys.modules\n"
        "import asyncio.base_events as be\n"
        "assert be.ssl is None\n"
        "import ssl\n"
        "assert ssl.PROTOCOL_TLS_CLIENT and not imp()\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.stdout.strip() == "ok", r.stderr
    r = subprocess.run([sys.executable, "-c", "import ssl, sys\n"
                        "from sentinel.agent.cli import import_asyncio_without_tls as imp\n"
                        "assert not imp()\nimport asyncio.base_events as be\n"
                        "assert be.ssl is ssl\nprint('ok')\n"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.strip() == "ok", r.stderr
