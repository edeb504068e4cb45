"""Issue 13, items 5 and 12: the configuration under bad input and the real deployment.

Each test reproduces what the probe did to main: environment variables that are not
config keys, a misspelled section, duplicate keys, a non-UTF-8 file, numbers that
overflow after start, an uncreatable queue directory, a secret of the wrong type, a
FIFO given as the config file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel import config
from sentinel.agent.config import AgentConfig
from sentinel.cli import main
from sentinel.config import ConfigError, load_section, read_yaml_file
from sentinel.notify.config import load_notify_config

pytestmark = pytest.mark.adversarial

ROOT = Path(__file__).resolve().parents[2]


def _sentinel(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run sentinel in a child: what might hang (a FIFO, a device) is bounded."""
    full = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sentinel", *argv], capture_output=True,
                          text=True, timeout=timeout, env=full, check=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run sentinel in this process; return (exit code, stdout + stderr)."""
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


# -- item 5: environment variables that are not config keys ---------------------------
@pytest.mark.parametrize("name", ["SENTINEL_AGENT_ARGS", "SENTINEL_AGENT_UDP"])
def test_environment_that_is_not_a_key_is_not_an_error(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """systemd exports /etc/default/sentinel-agent; the Reporter's variables live there too."""
    with caplog.at_level(logging.WARNING):
        cfg = load_section(AgentConfig, "agent", env={name: "--textfile-dir=/x 127.0.0.1:1"})
    assert cfg.listen_address == AgentConfig().listen_address
    assert name not in caplog.text  # known, read elsewhere: not even a warning


def test_misspelled_environment_key_warns_with_the_close_match(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_section(AgentConfig, "agent",
                           env={"SENTINEL_AGENT_WATCHDOG_INTERVAL_SECOND": "9"})
    assert cfg.watchdog_interval_seconds == AgentConfig().watchdog_interval_seconds
    assert "SENTINEL_AGENT_WATCHDOG_INTERVAL_SECOND" in caplog.text
    assert "did you mean SENTINEL_AGENT_WATCHDOG_INTERVAL_SECONDS" in caplog.text


def test_misspelled_key_in_the_file_or_flags_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="agent.watchdog_interval_second: unknown key"):
        load_section(AgentConfig, "agent", env={},
                     file_data={"agent": {"watchdog_interval_second": 9}})


# -- item 12: the file ------------------------------------------------------------------
def test_misspelled_section_names_the_valid_ones(tmp_path: Path) -> None:
    f = tmp_path / "sentinel.yml"
    f.write_text("agnet:\n  listen_address: 127.0.0.1:9\nnotify:\n  channel: C1\n")
    with pytest.raises(ConfigError) as e:
        read_yaml_file(f)
    msg = str(e.value)
    assert "unknown section 'agnet'" in msg and "did you mean 'agent'" in msg
    for name in ("agent", "notify", "rollback", "burnin", "dashboards"):
        assert name in msg


def test_each_part_declares_its_section() -> None:
    assert {"agent", "notify", "rollback", "burnin", "dashboards"} <= set(config.known_sections())


def test_misspelled_section_fails_the_command(tmp_path: Path, capsys) -> None:
    f = tmp_path / "sentinel.yml"
    f.write_text("rollbak:\n  wait_s: 3\n")
    (tmp_path / "run").mkdir()
    rc, out = _run(capsys, "rollback", "--config", str(f), "--job", "j", "--run-dir",
                   str(tmp_path / "run"), "--to-step", "1")
    assert rc == 2, out
    assert "unknown section 'rollbak'" in out and "did you mean 'rollback'" in out


@pytest.mark.parametrize("text,message", [
    ("agent:\n  socket: /a\n  socket: /b\n", "line 3: duplicate key 'socket' (first on line 2"),
    ("agent: {}\nnotify: {}\nagent: {}\n", "line 3: duplicate key 'agent' (first on line 1"),
])
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_yaml_file(f)
    assert message in str(e.value)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("notify: &n\n  channel: C1\nrollback:\n  wait_s: 2\n"
                 "dashboards:\n  <<: {folder: A}\n  folder: B\n")
    assert read_yaml_file(f)["dashboards"] == {"folder": "B"}


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_bytes(b"notify:\n  channel: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text.*line 2"):
        read_yaml_file(f)


def test_fifo_as_config_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "c.yml"
    os.mkfifo(fifo)
    r = _sentinel("rollback", "--config", str(fifo), "--job", "j", "--run-dir",
                  str(tmp_path), "--to-step", "1", timeout=20)
    assert r.returncode == 2, r.stderr
    assert "named pipe" in r.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_devices_as_config_are_refused(device: str) -> None:
    # In a child with a timeout: on main, /dev/zero is read until memory runs out.
    r = _sentinel("notify", "--config", device, "status", timeout=20)
    assert r.returncode == 2, r.stderr
    assert "character device" in r.stderr


def test_numbers_that_overflow_after_start_are_refused() -> None:
    with pytest.raises(ConfigError, match="watchdog_interval_seconds.*above the maximum"):
        load_section(AgentConfig, "agent",
                     env={"SENTINEL_AGENT_WATCHDOG_INTERVAL_SECONDS": "1e308"})
    with pytest.raises(ConfigError, match="notify.dedupe_window_s.*above the maximum"):
        load_notify_config(env={"SENTINEL_NOTIFY_DEDUPE_WINDOW_S": "1e300"})
    with pytest.raises(ConfigError, match="rollback.wait_s.*above the maximum"):
        from sentinel.train.cli import RollbackConfig

        load_section(RollbackConfig, "rollback", env={"SENTINEL_ROLLBACK_WAIT_S": "1e20"})


def test_uncreatable_queue_dir_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(blocker / "queue"))
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.invalid/T/B/x")
    for argv in (("notify", "status"), ("notify", "flush")):
        rc, out = _run(capsys, *argv)  # main: an OSError traceback
        assert rc == 2, out
        assert "notify.queue_dir" in out and str(blocker / "queue") in out


@pytest.mark.parametrize("value", ["[xoxb-1111, xoxb-2222]", "{xoxb-1111: 1}"])
def test_non_string_secret_is_never_echoed(tmp_path: Path, value: str, capsys,
                                           monkeypatch) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"notify:\n  slack_token: {value}\n  channel: C1\n")
    with pytest.raises(ConfigError) as e:
        load_notify_config(file_data=read_yaml_file(f), env={})
    assert "notify.slack_token" in str(e.value)
    assert "xoxb" not in str(e.value)
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(tmp_path / "q"))
    rc, out = _run(capsys, "notify", "--config", str(f), "status")
    assert rc == 2 and "notify.slack_token" in out and "xoxb" not in out
