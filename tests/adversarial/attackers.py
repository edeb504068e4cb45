"""Slow HTTP clients against the agent, in a process of their own (one thread, selectors).

``python -m tests.adversarial.attackers HOST:PORT --tricklers 32 --never-read 20
--seconds 20 --path /api/v1/steps?job=big`` runs until the time is up (or SIGTERM) and
prints one JSON line: how often the server cut each kind of client off.

- A trickler opens a connection and sends its request one byte every ``--trickle-s``
  seconds without ever finishing the headers; when the server closes it, it reconnects.
- A never-reader shrinks its receive buffer, sends a burst of pipelined GETs for a large
  answer and never reads a byte; it sends one more request every second to notice that
  the server closed it, then reconnects.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import time

TRICKLE = b"GET /metrics HTTP/1.1\r\nHost: probe\r\nUser-Agent: trickler\r\nX-Pad: " + b"a" * 10**6


class _Client:
    def __init__(self, kind: str, addr: tuple[str, int], path: str,
                 sel: selectors.BaseSelector) -> None:
        self.kind = kind
        self.sel = sel
        self.addr = addr
        self.path = path
        self.sock: socket.socket | None = None
        self.sent = 0
        self.next_at = 0.0
        self.cut = 0  # times the server closed or reset this client's connection

    def connect(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.kind == "never":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(2.0)
        try:
            s.connect(self.addr)
        except OSError:
            s.close()
            self.sock = None
            return
        s.setblocking(False)
        self.sock, self.sent = s, 0
        if self.kind == "trickle":
            self.sel.register(s, selectors.EVENT_READ, self)
        else:
            req = f"GET {self.path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode()
            self._send(req * 50)

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.send(data)
        except BlockingIOError:
            pass  # our own send buffer is full: the server is not reading requests either
        except OSError:
            self.drop()

    def tick(self, now: float, trickle_s: float) -> None:
        if self.sock is None:
            self.connect()
            return
        if now < self.next_at:
            return
        if self.kind == "trickle":
            self.next_at = now + trickle_s
            self._send(TRICKLE[self.sent:self.sent + 1])
            if self.sock is not None:
                self.sent += 1
        else:
            self.next_at = now + 1.0
            self._send(f"GET {self.path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())

    def drop(self) -> None:
        """The server closed or reset the connection: count it and forget the socket."""
        if self.sock is None:
            return
        if self.kind == "trickle":
            self.sel.unregister(self.sock)
        self.sock.close()
        self.sock = None
        self.cut += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--tricklers", type=int, default=32)
    ap.add_argument("--never-read", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--trickle-s", type=float, default=0.5)
    ap.add_argument("--path", default="/metrics")
    a = ap.parse_args()
    host, _, port = a.target.rpartition(":")
    addr = (host, int(port))
    sel = selectors.DefaultSelector()
    clients = ([_Client("trickle", addr, a.path, sel) for _ in range(a.tricklers)]
               + [_Client("never", addr, a.path, sel) for _ in range(a.never_read)])
    end = time.monotonic() + a.seconds
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    while (now := time.monotonic()) < end and not stopped:
        for c in clients:
            c.tick(now, a.trickle_s)
        for key, _ in sel.select(timeout=0.02):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # EOF or reset: the server cut the trickler off
                c.drop()
    out = {k: sum(c.cut for c in clients if c.kind == k) for k in ("trickle", "never")}
    out["open_at_end"] = sum(c.sock is not None for c in clients)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
