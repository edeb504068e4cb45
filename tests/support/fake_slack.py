"""A local HTTP server that speaks the parts of Slack's Web API sentinel uses.

Implements chat.postMessage, conversations.history, conversations.replies,
files.getUploadURLExternal, the upload URL it hands out, files.completeUploadExternal and
an incoming webhook, checking the bot token on every API call. Faults are switched on by
the tests: a 429 with Retry-After, an outage (503), a token without the files:write scope.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.support.services import free_port

TOKEN = "xoxb-test-0000-SECRET-token"
WEBHOOK_PATH = "/services/T000/B000/SECRETwebhookPART"


@dataclass
class Posted:
    """One message Slack accepted."""

    channel: str
    ts: str
    text: str
    thread_ts: str | None
    metadata: dict[str, Any] | None


@dataclass
class FakeSlack:
    """State and faults of the fake Slack."""

    server: HTTPServer
    channel_id: str = "C0SENTINEL"
    messages: list[Posted] = field(default_factory=list)
    webhook_messages: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    completed: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[float, str]] = field(default_factory=list)
    allow_uploads: bool = True
    outage: bool = False
    rate_limit_next: int = 0  # answer this many API calls with 429
    retry_after_s: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0

    @property
    def api_url(self) -> str:
        """Base URL for WebClient (ends with a slash)."""
        return self.server.url_for("/api/")

    @property
    def webhook_url(self) -> str:
        """URL of the incoming webhook."""
        return self.server.url_for(WEBHOOK_PATH)

    def install(self) -> FakeSlack:
        """Route every request on the server to this fake."""
        self.server.expect_request(re.compile(".*")).respond_with_handler(self.handle)
        return self

    def thread_of(self, ts: str) -> list[Posted]:
        """Replies in the thread started by ``ts``."""
        return [m for m in self.messages if m.thread_ts == ts]

    def top_level(self) -> list[Posted]:
        """Messages not in a thread."""
        return [m for m in self.messages if m.thread_ts is None]

    # -- the server side --------------------------------------------------------------

    def _params(self, req: Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(req.args.items())
        params.update(req.form.items())
        if req.mimetype == "application/json":
            params.update(req.get_json(silent=True) or {})
        return params

    def _json(self, body: dict[str, Any], status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body), status=status, headers=headers or {},
                        mimetype="application/json")

    def handle(self, req: Request) -> Response:
        with self._lock:
            self.requests.append((time.monotonic(), req.path))
            if self.outage:
                return self._json({"ok": False, "error": "service_unavailable"}, 503)
            if req.path == WEBHOOK_PATH:
                self.webhook_messages.append(req.get_json())
                return Response("ok", status=200)
            if req.path.startswith("/upload/"):
                self.uploads[req.path.rsplit("/", 1)[1]] = req.get_data()
                return Response("OK", status=200)
            if not req.path.startswith("/api/"):
                return Response("no_service", status=404)
            if self.rate_limit_next > 0:
                self.rate_limit_next -= 1
                return self._json({"ok": False, "error": "ratelimited"}, 429,
                                  {"Retry-After": str(self.retry_after_s)})
            if req.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._json({"ok": False, "error": "invalid_auth"})
            method = req.path[len("/api/"):]
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            if handler is None:
                return self._json({"ok": False, "error": "unknown_method"}, 404)
            return self._json(handler(self._params(req)))

    def _next_ts(self) -> str:
        # Like Slack: epoch seconds, then a sequence that keeps ts unique per channel.
        self._seq += 1
        return f"{int(time.time())}.{self._seq:06d}"

    def _channel(self, name: str) -> str | None:
        return self.channel_id if name in (self.channel_id, "#alerts") else None

    def _chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel", ""))
        if ch is None:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text"):
            return {"ok": False, "error": "no_text"}
        thread_ts = p.get("thread_ts") or None
        if thread_ts is not None and not any(m.ts == thread_ts for m in self.messages):
            return {"ok": False, "error": "thread_not_found"}
        meta = p.get("metadata")
        if isinstance(meta, str):
            meta = json.loads(meta)
        m = Posted(ch, self._next_ts(), p["text"], thread_ts, meta)
        self.messages.append(m)
        return {"ok": True, "channel": ch, "ts": m.ts, "message": {"text": m.text}}

    def _msg(self, m: Posted) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": m.ts, "text": m.text}
        if m.thread_ts:
            out["thread_ts"] = m.thread_ts
        if m.metadata:
            out["metadata"] = m.metadata
        return out

    def _conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        if self._channel(p.get("channel", "")) is None:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(p.get("oldest", 0))
        msgs = [self._msg(m) for m in self.top_level() if float(m.ts) >= oldest]
        return {"ok": True, "messages": list(reversed(msgs)), "has_more": False}

    def _conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        ts = p.get("ts")
        parent = [m for m in self.messages if m.ts == ts]
        if not parent:
            return {"ok": False, "error": "thread_not_found"}
        return {"ok": True, "messages": [self._msg(m) for m in parent + self.thread_of(ts)]}

    def _files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if not self.allow_uploads:
            return {"ok": False, "error": "missing_scope", "needed": "files:write"}
        self._seq += 1
        file_id = f"F{self._seq:08d}"
        return {"ok": True, "file_id": file_id,
                "upload_url": self.server.url_for(f"/upload/{file_id}")}

    def _files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = p["files"]
        if isinstance(files, str):
            files = json.loads(files)
        missing = [f["id"] for f in files if f["id"] not in self.uploads]
        if missing:
            return {"ok": False, "error": "file_not_found"}
        self.completed.append({"files": files, "channel_id": p.get("channel_id"),
                               "thread_ts": p.get("thread_ts")})
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}


@contextlib.contextmanager
def http_server() -> Iterator[HTTPServer]:
    """Run a local HTTP server on a free port (Slack's stand-in, or a bare webhook)."""
    server = HTTPServer(host="127.0.0.1", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@contextlib.contextmanager
def running_fake_slack() -> Iterator[FakeSlack]:
    """Run a :class:`FakeSlack` on a local server for the length of the block."""
    with http_server() as server:
        yield FakeSlack(server).install()
