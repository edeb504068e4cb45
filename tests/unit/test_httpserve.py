"""sentinel.httpserve over real sockets: deadlines, eviction, byte budget, bad requests."""

from __future__ import annotations

import ast
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from sentinel.httpserve import HttpServer, Limits, Request, Response

BIG = b"x" * (600 << 10)


def handler(req: Request) -> Response:
    if req.path == "/boom":
        raise RuntimeError("a handler bug")
    if req.path == "/big":
        return Response(200, BIG)
    if req.path == "/slow":
        time.sleep(float(req.query.get("s", ["0.5"])[0]))
    return Response(200, f"hello {req.path} {req.query}".encode())


@pytest.fixture
def serve():
    servers = []

    def start(**limits) -> tuple[HttpServer, str]:
        srv = HttpServer("127.0.0.1", 0, handler, Limits(**limits))
        srv.start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.address[1]}"

    yield start
    for s in servers:
        s.stop()


def _connect(srv: HttpServer, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(srv.address)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (reading and discarding)."""
    s.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if s.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def test_get_head_keepalive_and_query(serve):
    _srv, url = serve()
    with requests.Session() as http:
        r = http.get(f"{url}/a?x=1&x=2&y=", timeout=5)
        assert r.status_code == 200 and r.text == "hello /a {'x': ['1', '2'], 'y': ['']}"
        assert http.get(f"{url}/b", timeout=5).text.startswith("hello /b")  # same connection
        h = http.head(f"{url}/a?x=1&x=2&y=", timeout=5)
        assert h.status_code == 200 and h.content == b""
        assert int(h.headers["Content-Length"]) == len(r.content)


def test_a_trickling_client_is_cut_off_at_the_head_deadline(serve):
    srv, url = serve(head_s=0.5)
    s = _connect(srv)
    t0 = time.monotonic()
    cut = False
    try:
        for ch in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100:
            s.send(bytes([ch]))  # a byte every 50 ms: never idle, never done
            time.sleep(0.05)
    except OSError:
        cut = True
    cut = cut or _closed_within(s, 2)
    assert cut and time.monotonic() - t0 < 3
    assert srv.stats.head >= 1
    assert requests.get(f"{url}/x", timeout=5).status_code == 200


def test_an_idle_keepalive_is_closed_and_a_busy_one_is_kept(serve):
    srv, url = serve(idle_s=0.5)
    s = _connect(srv)
    for _ in range(3):  # requests 0.3 s apart keep it
        s.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello /k" in s.recv(4096)
        time.sleep(0.3)
    assert _closed_within(s, 2)
    assert srv.stats.idle == 1
    silent = _connect(srv)  # connects and says nothing
    assert _closed_within(silent, 2)


def test_a_client_that_never_reads_is_cut_off_at_the_write_deadline(serve):
    srv, url = serve(write_s=0.5, sndbuf_bytes=16 << 10)
    s = _connect(srv, rcvbuf=4096)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    deadline = time.monotonic() + 5
    while srv.stats.write < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stats.write == 1
    assert requests.get(f"{url}/x", timeout=5).status_code == 200


def test_past_max_connections_the_longest_stalled_is_closed_for_a_newcomer(serve):
    srv, url = serve(max_connections=4)
    stalled = [_connect(srv) for _ in range(4)]
    for s in stalled:
        s.send(b"GET /")  # each in the middle of its headers
        time.sleep(0.02)
    r = requests.get(f"{url}/new", timeout=5)
    assert r.status_code == 200 and r.text.startswith("hello /new")
    assert srv.stats.evicted >= 1
    assert _closed_within(stalled[0], 2)  # the oldest went first


def test_connections_running_a_handler_are_never_evicted(serve):
    srv, url = serve(max_connections=2, workers=2)
    results: list[int] = []

    def slow() -> None:
        results.append(requests.get(f"{url}/slow?s=1", timeout=10).status_code)

    ts = [threading.Thread(target=slow) for _ in range(2)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    extra = _connect(srv)
    assert _closed_within(extra, 1)  # no room: refused, not one of the running two
    for t in ts:
        t.join(10)
    assert results == [200, 200] and srv.stats.refused >= 1


def test_answer_bytes_waiting_on_slow_readers_are_bounded(serve):
    # 600 KiB answers, a 1 MiB budget: the second never-reader's answer makes the
    # first one's connection go.
    srv, url = serve(max_pending_bytes=1 << 20, sndbuf_bytes=16 << 10, write_s=30)
    a = _connect(srv, rcvbuf=4096)
    a.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    b = _connect(srv, rcvbuf=4096)
    b.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    assert srv.stats.evicted == 1
    assert _closed_within(a, 2)
    assert requests.get(f"{url}/x", timeout=5).status_code == 200


@pytest.mark.parametrize(("raw", "code"), [
    (b"POST /x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/2.0\r\n\r\n", 505),
    (b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
])
def test_bad_requests_get_an_error_and_the_connection_closes(serve, raw, code):
    srv, url = serve()
    s = _connect(srv)
    s.sendall(raw)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(f"HTTP/1.1 {code} ".encode()), data[:100]
    assert b"Connection: close" in data
    if code == 405:
        assert b"Allow: GET, HEAD" in data


def test_http_1_0_closes_after_the_answer(serve):
    srv, _url = serve()
    s = _connect(srv)
    s.sendall(b"GET /x HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"hello /x {}")


def test_a_handler_bug_is_a_500_and_the_server_lives(serve, caplog):
    srv, url = serve()
    for _ in range(3):
        r = requests.get(f"{url}/boom", timeout=5)
        assert r.status_code == 500
    assert srv.alive() and requests.get(f"{url}/x", timeout=5).status_code == 200
    assert caplog.text.count("Traceback") <= 1  # rate-limited


def test_stop_closes_everything(serve):
    srv, url = serve()
    s = _connect(srv)
    srv.stop()
    assert not srv.alive()
    assert _closed_within(s, 2)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/x", timeout=2)


def test_httpserve_imports_no_part_of_sentinel():
    """A controller can serve its own /metrics with it without importing the agent."""
    src = Path(__file__).resolve().parents[2] / "sentinel" / "httpserve.py"
    mods = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    assert {m for m in mods if m.startswith("sentinel")} == {"sentinel.ratelog"}
