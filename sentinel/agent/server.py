"""Serve /metrics, /healthz and GET /api/v1/steps over HTTP, with bounded concurrency."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sentinel.agent.exporter import Agent
from sentinel.jsonnum import dumps

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
# Time a connection gets to deliver a whole request line and headers, counted from when
# the server starts waiting for it. A per-read timeout alone lets a client that sends a
# byte every few seconds hold a connection slot forever (16 such clients would lock
# Prometheus out); a scrape's request arrives in milliseconds. It also closes keep-alive
# connections idle this long, which costs Prometheus one reconnect per scrape at most.
REQUEST_DEADLINE_S = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], agent: Agent, max_conns: int) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.agent = agent
        self._slots = threading.BoundedSemaphore(max_conns)
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bound the handler threads: past the cap a connection is closed at once.
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
        """Read and answer one request, dropping the connection past REQUEST_DEADLINE_S."""
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._abort)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def parse_request(self) -> bool:
        """Parse the request; once its headers are in, the deadline no longer applies."""
        self._deadline.cancel()
        return super().parse_request()

    def _abort(self) -> None:
        log.debug("closing %s: no complete request in %.0f s", self.client_address,
                  REQUEST_DEADLINE_S)
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

    def _json(self, code: int, obj: Any) -> None:
        # NaN/Inf losses leave as "NaN"/"Infinity" strings: strict JSON for every client.
        self._send(code, dumps(obj).encode(), "application/json")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        agent = self.server.agent
        if url.path == "/metrics":
            self._send(200, agent.render(), CONTENT_TYPE_METRICS)
        elif url.path == "/healthz":
            ok, why = agent.health()
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
        elif url.path == "/api/v1/steps":
            self._steps(parse_qs(url.query, keep_blank_values=True))
        elif url.path == "/":
            self._send(200, b"sentinel agent: /metrics /healthz /api/v1/steps?job=J&since=STEP\n",
                       "text/plain")
        else:
            self._json(404, {"error": f"no such path {url.path!r} "
                                      "(valid: /metrics, /healthz, /api/v1/steps)"})

    def _steps(self, q: dict[str, list[str]]) -> None:
        tr = self.server.agent.training
        if tr is None:
            self._json(404, {"error": "the training collector is disabled on this agent"})
            return
        unknown = sorted(set(q) - {"job", "since", "rank"})
        if unknown:
            # A misspelt "since" would otherwise silently return the whole ring.
            self._json(400, {"error": f"unknown parameter {unknown[0]!r} "
                                      "(valid: job, since, rank)"})
            return
        job = (q.get("job") or [""])[0]
        if not job:
            self._json(400, {"error": "missing parameter 'job' (e.g. ?job=myrun&since=0)"})
            return
        params: dict[str, int | None] = {"since": 0, "rank": None}
        for name in ("since", "rank"):
            raw = q.get(name)
            if not raw:
                continue
            try:
                v = int(raw[0])
            except ValueError:
                self._json(400, {"error": f"parameter {name!r}: {raw[0]!r} is not an integer"})
                return
            if v < 0:
                self._json(400, {"error": f"parameter {name!r}: {v} is negative"})
                return
            params[name] = v
        store = tr.store
        try:
            recs = store.steps(job, params["since"] or 0, params["rank"])
        except KeyError:
            known = ", ".join(store.job_names()) or "none"
            self._json(404, {"error": f"unknown job {job!r} (known: {known})"})
            return
        self._json(200, {"job": job, "steps": recs})


class HttpServer:
    """The agent's HTTP endpoint, served from a background thread."""

    def __init__(self, host: str, port: int, agent: Agent, max_conns: int = 16) -> None:
        self.httpd = _Server((host, port), agent, max_conns)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name="sentinel-http", daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) actually bound."""
        h, p = self.httpd.server_address[:2]
        return str(h), int(p)

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()

    def alive(self) -> bool:
        """Return True while the serving thread runs."""
        return self.thread.is_alive()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
