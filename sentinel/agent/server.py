"""Serve /metrics, /healthz, GET /api/v1/steps (paged) and /api/v1/node (sentinel.httpserve)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

from sentinel.agent.exporter import Agent
from sentinel.agent.nodestream import node_records
from sentinel.agent.steps import Cursor
from sentinel.httpserve import HttpServer as _HttpServer
from sentinel.httpserve import Limits, Request, Response
from sentinel.jsonnum import dumps, encode_number

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
# One /api/v1/steps answer holds at most this many records and bytes; the rest follows
# through its "next" cursor. A record is ~170 bytes of JSON (at most ~450 with the
# longest host), so a full 20000-record ring is 4-5 pages; 16 clients reading at once
# then hold a few MiB, not a ring's worth each.
MAX_PAGE_RECORDS = 5000
MAX_PAGE_BYTES = 1 << 20
STEPS_PARAMS = ("job", "since", "rank", "limit", "cursor")
NODE_PARAMS = ("job", "since")
# One strict encoder for every record (json.dumps builds one per call): a record's only
# floats that can be non-finite are loss and grad_norm, spelled as strings before.
_RECORD_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class AgentRoutes:
    """Answer the agent's endpoints (called from the server's handler threads)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def __call__(self, req: Request) -> Response:
        """Route one request."""
        agent = self.agent
        if req.path == "/metrics":
            return Response(200, agent.render(), CONTENT_TYPE_METRICS)
        if req.path == "/healthz":
            ok, why = agent.health()
            return Response(200 if ok else 503, (why + "\n").encode())
        if req.path == "/api/v1/steps":
            return self.steps(req.query)
        if req.path == "/api/v1/node":
            return self.node(req.query)
        if req.path == "/":
            return Response(200, b"sentinel agent: /metrics /healthz "
                                 b"/api/v1/steps?job=J&since=STEP[&limit=N&cursor=NEXT] "
                                 b"/api/v1/node?job=J&since=UNIX_TIME\n")
        return _json(404, {"error": f"no such path {req.path!r} "
                                    "(valid: /metrics, /healthz, /api/v1/steps, /api/v1/node)"})

    def node(self, q: dict[str, list[str]]) -> Response:
        """Answer the node records newer than ``since`` for a job (see docs/METRICS.md)."""
        tr = self.agent.training
        if tr is None:
            return _json(404, {"error": "the training collector is disabled on this agent"})
        job, bad = _job_query(q, NODE_PARAMS)
        if bad is not None:
            return bad
        raw = (q.get("since") or ["0"])[0]
        try:
            since = float(raw)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return _json(400, {"error": f"parameter 'since': {raw[:40]!r} is not a time "
                                        "(valid: unix seconds, the newest record's time "
                                        "seen)"})
        try:
            host, gpus, ranks = tr.store.placement(job)
        except KeyError:
            known = ", ".join(tr.store.job_names()) or "none"
            return _json(404, {"error": f"unknown job {job[:200]!r} (known: {known})"})
        sampler = self.agent.node_sampler
        recs = node_records(self.agent.node_ring.since(since),
                            sampler.uuids if sampler is not None else {},
                            host or self.agent.ctx.hostname, gpus, ranks)
        return Response(200, dumps({"job": job, "node": recs}).encode(), "application/json")

    def steps(self, q: dict[str, list[str]]) -> Response:
        """Answer one page of a job's step records (see docs/METRICS.md)."""
        tr = self.agent.training
        if tr is None:
            return _json(404, {"error": "the training collector is disabled on this agent"})
        job, bad = _job_query(q, STEPS_PARAMS)
        if bad is not None:
            return bad
        params: dict[str, int | None] = {"since": 0, "rank": None, "limit": MAX_PAGE_RECORDS}
        for name in ("since", "rank", "limit"):
            raw = q.get(name)
            if not raw:
                continue
            try:
                v = int(raw[0])
            except ValueError:
                return _json(400, {"error": f"parameter {name!r}: {raw[0][:40]!r} is not an "
                                            "integer"})
            if v < 0 or (name == "limit" and not 1 <= v <= MAX_PAGE_RECORDS):
                valid = f"1..{MAX_PAGE_RECORDS}" if name == "limit" else ">= 0"
                return _json(400, {"error": f"parameter {name!r}: {v} is out of range "
                                            f"(valid: {valid})"})
            params[name] = v
        after = None
        if q.get("cursor"):
            after = parse_cursor(q["cursor"][0])
            if after is None:
                return _json(400, {"error": f"parameter 'cursor': {q['cursor'][0][:40]!r} is "
                                            "not a cursor of this agent (valid: the 'next' "
                                            "of a previous answer)"})
        store = tr.store
        try:
            page, more = store.page(job, params["since"] or 0, params["rank"], after,
                                    params["limit"])
        except KeyError:
            known = ", ".join(store.job_names()) or "none"
            return _json(404, {"error": f"unknown job {job[:200]!r} (known: {known})"})
        return Response(200, _page_body(job, page, more), "application/json")


def parse_cursor(text: str) -> Cursor | None:
    """Return the (step, rank, seq) a cursor names, or None if it is not one."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 20 for p in parts):
        return None
    step, rank, seq = (int(p) for p in parts)
    return step, rank, seq


def _page_body(job: str, page: list[tuple[Cursor, dict[str, Any]]], more: bool) -> bytes:
    """Encode one page, stopping at MAX_PAGE_BYTES; "next" is set when records remain."""
    parts: list[str] = []
    size = 0
    last: Cursor | None = None
    for key, rec in page:
        # NaN/Inf losses leave as "NaN"/"Infinity" strings: strict JSON for every client.
        rec["loss"] = encode_number(rec["loss"])
        rec["grad_norm"] = encode_number(rec["grad_norm"])
        text = _RECORD_JSON.encode(rec)
        if parts and size + len(text) + 1 > MAX_PAGE_BYTES:
            more = True
            break
        parts.append(text)
        size += len(text) + 1
        last = key
    nxt = ".".join(map(str, last)) if more and last is not None else None
    return (f'{{"job":{dumps(job)},"steps":[{",".join(parts)}],"next":{dumps(nxt)}}}'
            ).encode()


def _json(code: int, obj: Any) -> Response:
    return Response(code, dumps(obj).encode(), "application/json")


def _job_query(q: dict[str, list[str]], valid: tuple[str, ...]) -> tuple[str, Response | None]:
    """Return a job query's job, or the error answer (an unknown key, no job)."""
    unknown = sorted(set(q) - set(valid))
    if unknown:
        # A misspelt "since" would otherwise silently return the whole ring.
        return "", _json(400, {"error": f"unknown parameter {unknown[0]!r} "
                                        f"(valid: {', '.join(valid)})"})
    job = (q.get("job") or [""])[0]
    if not job:
        return "", _json(400, {"error": "missing parameter 'job' (e.g. ?job=myrun&since=0)"})
    return job, None


class HttpServer(_HttpServer):
    """The agent's HTTP endpoint, served from a background thread."""

    def __init__(self, host: str, port: int, agent: Agent, max_conns: int | None = None,
                 limits: Limits | None = None) -> None:
        lim = limits or Limits()
        if max_conns is not None:
            lim = dataclasses.replace(lim, max_connections=max_conns)
        super().__init__(host, port, AgentRoutes(agent), lim, name="http")
