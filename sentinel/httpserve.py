"""A small HTTP/1.1 server for read-only endpoints that slow clients cannot block.

The agent serves /metrics to Prometheus on a port the whole network can reach. A
thread-per-connection server (``http.server``) gives every connection a thread and a
slot: 32 clients trickling their headers a byte at a time, or 20 that never read their
answer, held every slot and locked Prometheus out (issue 13). Here one asyncio loop in
a thread of its own owns every connection, and only the handlers run in a small pool
of threads; each connection has three deadlines (no byte of a request within
``idle_s``: an idle keep-alive is closed; the rest of the headers within ``head_s``
of its first byte; the whole answer handed to the kernel within ``write_s``), and
past ``max_connections`` the connection stalled longest is closed for the newcomer.
Answers waiting on slow readers are bounded in bytes across all connections.

Only GET and HEAD without a body are served. Nothing here imports a part of sentinel:
the agent uses it, and a controller serving its own /metrics can too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from sentinel.ratelog import LogLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The deadlines and caps of one server; the defaults suit a Prometheus exporter."""

    # Connections open at once; past this the one stalled longest is closed.
    max_connections: int = 64
    # No byte of a request for this long closes the connection: an idle keep-alive, or
    # a client that connected and said nothing. Costs Prometheus at most one reconnect
    # per scrape at intervals longer than this.
    idle_s: float = 10.0
    # The request line and headers must be complete this long after their first byte;
    # a scrape's request arrives in one packet.
    head_s: float = 5.0
    # The whole answer must be handed to the kernel within this; a 1 MiB answer needs
    # 100 KiB/s. Prometheus's default scrape_timeout is 10 s.
    write_s: float = 10.0
    max_head_bytes: int = 8192
    # Threads running handlers; scrapes are serialized by the agent anyway.
    workers: int = 4
    # Kernel send buffer per connection: what a client that never reads can make the
    # kernel hold for it (loopback would otherwise autotune up to 4 MiB each).
    sndbuf_bytes: int = 256 << 10
    # Answer bytes not yet handed to the kernel, all connections together; past this
    # the writers stalled longest are closed first.
    max_pending_bytes: int = 32 << 20


@dataclass
class Request:
    """One request: method, path, decoded query and headers (names lower case)."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Response:
    """What a handler answers; ``headers`` are added to Content-Type/Length."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


@dataclass
class Stats:
    """Connections the server cut off, by why (read them for tests and logs)."""

    accepted: int = 0
    idle: int = 0  # no request within idle_s
    head: int = 0  # headers not complete within head_s, or too large
    write: int = 0  # answer not taken within write_s
    evicted: int = 0  # closed to make room for a new connection or for pending bytes
    refused: int = 0  # no room: every connection was running a handler


class _Conn:
    """One connection: what it is doing since when, and its answer bytes in flight."""

    def __init__(self, transport: asyncio.WriteTransport,
                 task: asyncio.Task[None] | None) -> None:
        self.transport = transport
        self.task = task
        self.state = "idle"  # idle, head, handler, write
        self.since = time.monotonic()
        self.pending = 0

    def enter(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()

    def kill(self) -> None:
        """Close at once, dropping whatever is buffered (a RST for the client)."""
        self.transport.abort()
        if self.task is not None:
            self.task.cancel()


class HttpServer:
    """Serve ``handler`` on (host, port) from a background thread."""

    def __init__(self, host: str, port: int, handler: Handler, limits: Limits | None = None,
                 name: str = "http") -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.name = name
        self.stats = Stats()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.limits.workers, thread_name_prefix=f"sentinel-{name}")
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._closing = False
        self._errors = LogLimiter(log, 60.0)
        self.thread = threading.Thread(target=self._run, name=f"sentinel-{name}", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) actually bound."""
        h, p = self._sock.getsockname()[:2]
        return str(h), int(p)

    def start(self) -> None:
        """Serve in the background; return once connections are accepted."""
        self.thread.start()
        self._ready.wait(10)

    def alive(self) -> bool:
        """Return True while the serving thread runs."""
        return self.thread.is_alive()

    def stop(self) -> None:
        """Stop serving: close every connection and the socket, end the thread."""
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.thread.join(5)
        elif not self._loop.is_closed():
            self._loop.close()  # never started
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._loop_error)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._client, sock=self._sock, limit=self.limits.max_head_bytes))
            self._ready.set()
            self._loop.run_forever()
        finally:
            self._ready.set()
            # A connection accepted just before the stop is still in asyncio's accept
            # task, or in a _client task that never ran: run them (the latter see
            # _closing and close their socket) and the callbacks that close sockets.
            self._closing = True
            for _ in range(5):
                pending = asyncio.all_tasks(self._loop)
                if not pending:
                    break
                self._loop.run_until_complete(asyncio.wait(pending, timeout=1))
            self._loop.run_until_complete(asyncio.sleep(0.01))
            self._loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, object]) -> None:
        self._errors.log(logging.WARNING, "loop", "HTTP server: %s", ctx.get("message"))

    async def _shutdown(self) -> None:
        self._closing = True
        # Accepts in flight finish first (their _client sees _closing and closes): once
        # the server is closed, asyncio cannot make a transport of them, and their
        # socket would stay open until garbage-collected.
        await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.kill()
        await asyncio.sleep(0)  # the aborts' socket closes run

    def _admit(self, conn: _Conn) -> bool:
        """Make room for a new connection, closing the one stalled longest if full."""
        if len(self._conns) >= self.limits.max_connections:
            waiting = [c for c in self._conns if c.state != "handler"]
            if not waiting:
                self.stats.refused += 1
                return False
            victim = min(waiting, key=lambda c: c.since)
            self._drop(victim)
            self.stats.evicted += 1
        self._conns.add(conn)
        self.stats.accepted += 1
        return True

    def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        conn.kill()

    def _reserve(self, conn: _Conn, n: int) -> bool:
        """Make room for ``n`` answer bytes, closing the writers stalled longest."""
        budget = self.limits.max_pending_bytes
        while sum(c.pending for c in self._conns) + n > budget:
            writers = [c for c in self._conns if c.state == "write" and c is not conn]
            if not writers:
                return n <= budget
            self._drop(min(writers, key=lambda c: c.since))
            self.stats.evicted += 1
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        conn = _Conn(transport, asyncio.current_task())
        if self._closing or not self._admit(conn):
            transport.abort()
            return
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.sndbuf_bytes)
        # drain() then waits until every byte is in the kernel, so write_s covers it all.
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            while await self._one(conn, reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # noqa: BLE001 - one connection's bug must not stop the server
            self._errors.log(logging.ERROR, "conn", "HTTP connection failed", exc_info=True)
        finally:
            self._conns.discard(conn)
            transport.abort()

    async def _one(self, conn: _Conn, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> bool:
        """Serve one request; return whether to keep the connection for another."""
        lim = self.limits
        conn.enter("idle")
        try:
            async with asyncio.timeout(lim.idle_s):
                first = await reader.read(1)
        except TimeoutError:
            self.stats.idle += 1
            return False
        if not first:
            return False  # the client closed
        conn.enter("head")
        try:
            async with asyncio.timeout(lim.head_s):
                head = first + await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.stats.head += 1
            return False
        except asyncio.LimitOverrunError:
            self.stats.head += 1
            await self._answer(conn, writer, _error(431, "request headers too large"), False)
            return False
        except asyncio.IncompleteReadError:
            return False
        req = _parse(head)
        if isinstance(req, Response):
            await self._answer(conn, writer, req, False)
            return False
        conn.enter("handler")
        resp = await self._loop.run_in_executor(self._pool, self._call, req)
        keep = req.headers.get("connection", "").lower() != "close"
        return await self._answer(conn, writer, resp, keep, head_only=req.method == "HEAD")

    def _call(self, req: Request) -> Response:
        try:
            return self.handler(req)
        except Exception:  # noqa: BLE001 - a handler's bug is a 500, not a dead server
            self._errors.log(logging.ERROR, "handler", "HTTP handler failed on %s",
                             req.path, exc_info=True)
            return _error(500, "internal error (see the log)")

    async def _answer(self, conn: _Conn, writer: asyncio.StreamWriter, resp: Response,
                      keep: bool, head_only: bool = False) -> bool:
        """Write ``resp`` within write_s; return ``keep`` if it all went out."""
        status = HTTPStatus(resp.status)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}",
                 f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}"]
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        if not keep:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only:
            data += resp.body
        if not self._reserve(conn, len(data)):
            self.stats.evicted += 1
            return False
        conn.enter("write")
        conn.pending = len(data)
        writer.write(data)
        try:
            async with asyncio.timeout(self.limits.write_s):
                await writer.drain()
        except TimeoutError:
            self.stats.write += 1
            return False
        finally:
            conn.pending = 0
        return keep


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(code, (message + "\n").encode(), headers=headers or {})


def _parse(head: bytes) -> Request | Response:
    """Parse a request head into a Request, or the error Response to send and close."""
    text = head.decode("latin-1")
    line, *header_lines = text.rstrip("\r\n").split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3:
        return _error(400, "malformed request line (valid: METHOD TARGET HTTP/1.1)")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return _error(505, f"unsupported version {version[:20]!r} (valid: HTTP/1.1, HTTP/1.0)")
    headers: dict[str, str] = {}
    for h in header_lines:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            return _error(400, "malformed header line (valid: Name: value)")
        headers[name.strip().lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        return _error(405, f"method {method[:20]!r} is not served (valid: GET, HEAD)",
                      {"Allow": "GET, HEAD"})
    # No endpoint takes a body; one left unread would be parsed as the next request.
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return _error(400, "a request body is not accepted (valid: GET or HEAD without one)")
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"  # HTTP/1.0 closes unless it asks to keep
    url = urlsplit(target)
    return Request(method=method, target=target, path=url.path,
                   query=parse_qs(url.query, keep_blank_values=True), headers=headers)
