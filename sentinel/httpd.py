"""A small HTTP server for read-only GET endpoints: bounded connections, a request deadline.

Shared below the parts (the controller serves its /metrics and /healthz with it; it
imports no part). Each route is a function of the query string that returns
``(status, body, content type)``. At most ``max_conns`` connections are served at once
(past that a connection is closed at once), and a client gets ``REQUEST_DEADLINE_S``
to deliver its request line and headers, so clients that trickle bytes cannot hold
every slot (the agent's server, sentinel/agent/server.py, does the same).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sentinel.config import ConfigError

log = logging.getLogger(__name__)

# A scrape's request arrives in milliseconds; 10 s is generous and bounds a slow client.
REQUEST_DEADLINE_S = 10.0
# Prometheus (one or an HA pair), a person with curl, a health check: 8 is plenty.
DEFAULT_MAX_CONNS = 8

Route = Callable[[dict[str, list[str]]], tuple[int, bytes, str]]


def split_hostport(key: str, value: str) -> tuple[str, int]:
    """Return (host, port) of ``HOST:PORT`` (``[::1]:9465`` too); ConfigError names ``key``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (valid: e.g. 127.0.0.1:9465)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], routes: dict[str, Route], max_conns: int,
                 banner: str) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.routes = routes
        self.banner = banner
        self._slots = threading.BoundedSemaphore(max_conns)
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls mid-request frees its slot

    def handle_one_request(self) -> None:
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._abort)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def parse_request(self) -> bool:
        self._deadline.cancel()  # the headers are in: the deadline no longer applies
        return super().parse_request()

    def _abort(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        route = self.server.routes.get(url.path)
        if url.path == "/" and route is None:
            paths = " ".join(sorted(self.server.routes))
            self._send(200, f"{self.server.banner}: {paths}\n".encode(), "text/plain")
            return
        if route is None:
            valid = ", ".join(sorted(self.server.routes))
            self._send(404, f"no such path {url.path!r} (valid: {valid})\n".encode(),
                       "text/plain")
            return
        try:
            code, body, ctype = route(parse_qs(url.query, keep_blank_values=True))
        except Exception as e:  # noqa: BLE001 - one bad request must not kill the server
            log.exception("%s: handler failed", url.path)
            code, body, ctype = 500, f"internal error: {type(e).__name__}\n".encode(), \
                "text/plain"
        self._send(code, body, ctype)


class HttpServer:
    """Serve ``routes`` on ``host:port`` from a background thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], *,
                 max_conns: int = DEFAULT_MAX_CONNS, banner: str = "sentinel") -> None:
        self.httpd = _Server((host, port), routes, max_conns, banner)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, name="sentinel-http",
                                       daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) actually bound."""
        h, p = self.httpd.server_address[:2]
        return str(h), int(p)

    def start(self) -> HttpServer:
        """Serve in the background; return self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
