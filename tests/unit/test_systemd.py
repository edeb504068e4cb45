"""sentinel.systemd against a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET is."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.systemd import Notifier, watchdog_seconds


class NotifySocket:
    """The receiving end systemd binds: one datagram per notification."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Return what was sent and not read yet, without waiting."""
        out = []
        self.sock.settimeout(0)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return out


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[NotifySocket, str]]:
    path = str(tmp_path / "notify.sock")
    ns = NotifySocket(path)
    yield ns, path
    ns.sock.close()


def test_ready_status_watchdog_stopping_reach_the_socket(notify):
    ns, path = notify
    sd = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert sd.enabled
    assert sd.ready("serving :9464")
    assert ns.recv() == "READY=1\nSTATUS=serving :9464"
    assert sd.status("2 jobs\nreporting")  # a newline would start a new KEY= line
    assert ns.recv() == "STATUS=2 jobs reporting"
    assert sd.watchdog(True)
    assert ns.recv() == "WATCHDOG=1"
    assert sd.stopping()
    assert ns.recv() == "STOPPING=1"


def test_watchdog_is_fed_only_while_healthy_and_the_status_says_why(notify, caplog):
    ns, path = notify
    sd = Notifier.from_env({"NOTIFY_SOCKET": path})
    sd.ready("serving")
    ns.recv()
    with caplog.at_level(logging.INFO, logger="sentinel.systemd"):
        assert not sd.watchdog(False, "collector gpu has been collecting for 25s")
        assert not sd.watchdog(False, "collector gpu has been collecting for 30s")
    # One status line and one log line for the change, no WATCHDOG=1 at all.
    assert ns.pending() == ["STATUS=unhealthy: collector gpu has been collecting for 25s"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not feeding the watchdog" in errors[0].getMessage()
    assert sd.watchdog(True)
    # Healthy again: the watchdog is fed and the status line is the one from before.
    assert ns.pending() == ["WATCHDOG=1\nSTATUS=serving"]
    assert sd.watchdog(True)
    assert ns.pending() == ["WATCHDOG=1"]


def test_abstract_namespace_socket():
    name = f"sentinel-test-{uuid.uuid4().hex}"
    ns = NotifySocket("\0" + name)
    try:
        sd = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert sd.ready()
        assert ns.recv() == "READY=1"
    finally:
        ns.sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    sd = Notifier.from_env({})
    assert not sd.enabled
    assert not sd.ready("x")
    assert not sd.watchdog(True)
    assert not sd.stopping()


def test_unusable_notify_socket_is_named_and_disables_notifications(caplog):
    with caplog.at_level(logging.WARNING, logger="sentinel.systemd"):
        sd = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not sd.enabled
    assert "'vsock:2:1234' is not a socket" in caplog.text
    assert "absolute path or @abstract-name" in caplog.text
    assert not sd.ready()


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    sd = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="sentinel.systemd"):
        assert not sd.watchdog(True)
        assert not sd.watchdog(True)
    assert caplog.text.count("cannot notify systemd") == 1
    # It comes back (systemd re-created it): sending works again.
    ns = NotifySocket(str(tmp_path / "gone.sock"))
    try:
        assert sd.watchdog(True)
        assert ns.recv() == "WATCHDOG=1"
    finally:
        ns.sock.close()


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        # The watchdog belongs to another process (we inherited its environment).
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_seconds_follows_sd_watchdog_enabled(env, expect):
    assert watchdog_seconds(env) == expect


def test_interval_is_never_more_than_half_the_watchdog(caplog):
    sd = Notifier(None, watchdog_s=30.0)
    assert sd.interval(5.0, "agent.watchdog_interval_seconds") == 5.0
    with caplog.at_level(logging.WARNING, logger="sentinel.systemd"):
        assert sd.interval(60.0, "agent.watchdog_interval_seconds") == 15.0
    assert "agent.watchdog_interval_seconds 60.0 is not under half" in caplog.text
    assert Notifier(None).interval(60.0) == 60.0  # no watchdog: as configured
