"""Talk to systemd as a ``Type=notify`` service: ready, watchdog, status, stopping.

A daemon (the agent today, the controller later) makes one :class:`Notifier` at start
and calls it from its main loop::

    sd = Notifier.from_env()
    interval = sd.interval(cfg.loop_seconds, "controller.loop_seconds")
    sd.ready("serving on :9464")
    while not stop.is_set():
        ok, why = health()
        sd.watchdog(ok, why)  # WATCHDOG=1 only while healthy
        stop.wait(interval)
    sd.stopping()

The protocol is sd_notify(3): one datagram of ``KEY=value`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). Without ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``)
every call only logs what it would have said. Sending never raises: a daemon must not
die because its supervisor is unreachable (systemd then restarts it, which is the
point of the watchdog).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def watchdog_seconds(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Return systemd's WatchdogSec for this process in seconds, or None when off.

    As sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is the timeout, and when
    ``$WATCHDOG_PID`` is set the watchdog belongs to that process only (a child that
    inherited the environment must not pace itself by its parent's watchdog).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not a positive number of microseconds", raw)
        return None
    return usec / 1e6


def _address(path: str) -> str | None:
    """Return the socket address for ``$NOTIFY_SOCKET``, or None if it is not one."""
    if path.startswith("/"):
        return path
    if path.startswith("@") and len(path) > 1:
        return "\0" + path[1:]  # the abstract namespace
    return None


class Notifier:
    """Readiness, watchdog, status and stopping notifications for one daemon."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None = None) -> None:
        self.address: str | None = None
        if socket_path:
            self.address = _address(socket_path)
            if self.address is None:
                log.warning("NOTIFY_SOCKET=%r is not a socket systemd notifications can use "
                            "(valid: an absolute path or @abstract-name); not notifying",
                            socket_path)
        self.watchdog_s = watchdog_s
        self.healthy = True
        self._status = ""
        self._failing = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Build from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_seconds(env, pid))

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (started by systemd with a notify socket)."""
        return self.address is not None

    def interval(self, configured: float, key: str = "the loop interval") -> float:
        """Return how long the main loop may sleep between watchdog pings.

        Pinging less often than half of WatchdogSec (sd_watchdog_enabled's advice)
        would get a healthy daemon killed in a loop, so a longer ``configured`` value
        (the config key ``key``) is shortened, with a warning.
        """
        if self.watchdog_s is None:
            return configured
        half = self.watchdog_s / 2
        if half < configured:
            log.warning("%s %.1f is not under half of systemd's WatchdogSec (%.1fs): "
                        "feeding the watchdog every %.1fs instead", key, configured,
                        self.watchdog_s, half)
            return half
        return configured

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up is done (``READY=1``), with an optional status line."""
        self._status = _one_line(status)
        return self._send("READY=1" + (f"\nSTATUS={self._status}" if status else ""))

    def status(self, text: str) -> bool:
        """Set the line ``systemctl status`` shows (``STATUS=``)."""
        self._status = _one_line(text)
        return self._send(f"STATUS={self._status}")

    def watchdog(self, healthy: bool, why: str = "") -> bool:
        """Ping the watchdog (``WATCHDOG=1``) if ``healthy``; return whether it was sent.

        Call it every loop cycle. While unhealthy nothing is sent, so systemd restarts
        the daemon once WatchdogSec passes; the change of health is logged, and ``why``
        becomes the status line until the daemon is healthy again.
        """
        was = self.healthy
        self.healthy = healthy
        if not healthy:
            if was:
                log.error("unhealthy, not feeding the watchdog: %s", why)
                self._send(f"STATUS=unhealthy: {_one_line(why)}")
            return False
        if not was:
            log.info("healthy again, feeding the watchdog")
            return self._send(f"WATCHDOG=1\nSTATUS={self._status}")
        return self._send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
        return self._send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def _send(self, state: str) -> bool:
        if self.address is None:
            log.debug("sd_notify (no NOTIFY_SOCKET): %s", state.replace("\n", " "))
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), self.address)
        except OSError as e:
            # Logged once per run of failures: the watchdog pings every few seconds.
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), e)
            self._failing = True
            return False
        self._failing = False
        return True


def _one_line(text: str) -> str:
    """Return ``text`` without line breaks, which would start a new ``KEY=`` in the datagram."""
    return " ".join(text.split())
