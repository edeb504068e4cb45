"""GET /api/v1/steps in pages: limit, next cursor, byte cap, and StepStream following them."""

from __future__ import annotations

import json

import pytest
import requests

import sentinel.agent.server as server_mod
from sentinel.agent.exporter import Agent
from sentinel.agent.server import HttpServer
from sentinel.protocol import Identity, StepReport
from sentinel.rules.sources import StepStream
from tests.support.collectors import make_ctx


def rep(step: int, rank: int = 0, t: float = 0.0, host: str = "h") -> StepReport:
    return StepReport(Identity("j", rank, 42, "GPU-x", host), step, 2.0, 100, None, None,
                      t or float(step), extra={"batch": float(step)})


@pytest.fixture
def served(tmp_path):
    agent = Agent(make_ctx(tmp_path, collectors=["training"]))
    agent.start()
    http = HttpServer("127.0.0.1", 0, agent)
    http.start()
    try:
        yield agent.training.store, f"http://127.0.0.1:{http.address[1]}"
    finally:
        http.stop()
        agent.close()


def _all_pages(url: str, **params) -> tuple[list[dict], int]:
    out, pages = [], 0
    params = {"job": "j", **params}
    while True:
        r = requests.get(f"{url}/api/v1/steps", params=params, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        out += body["steps"]
        if body["next"] is None:
            return out, pages
        params["cursor"] = body["next"]


def test_pages_add_up_to_the_whole_answer_in_order(served):
    store, url = served
    for step in range(10):
        for rank in (1, 0):
            store.add(rep(step, rank))
    for step in (4, 5):  # a rollback: steps 4 and 5 again, later
        store.add(rep(step, 0, t=100.0 + step))
    whole = requests.get(f"{url}/api/v1/steps", params={"job": "j", "since": 3}, timeout=5).json()
    assert whole["next"] is None and len(whole["steps"]) == 16
    paged, pages = _all_pages(url, since=3, limit=3)
    assert pages == 6 and paged == whole["steps"]
    keys = [(s["step"], s["rank"], s["time"]) for s in paged]
    assert keys == sorted(keys, key=lambda k: (k[0], k[1]))  # by step, rank; then arrival
    assert (4, 0, 4.0) in keys and (4, 0, 104.0) in keys
    assert _all_pages(url, since=3, limit=3, rank=1)[0] == [s for s in paged if s["rank"] == 1]


def test_a_page_stops_at_the_byte_cap(served, monkeypatch):
    store, url = served
    monkeypatch.setattr(server_mod, "MAX_PAGE_BYTES", 2000)
    for step in range(100):
        store.add(rep(step, host="n" * 200))
    r = requests.get(f"{url}/api/v1/steps", params={"job": "j"}, timeout=5)
    assert len(r.content) < 2000 + 200 and r.json()["next"]
    paged, pages = _all_pages(url)
    assert [s["step"] for s in paged] == list(range(100)) and pages > 10


@pytest.mark.parametrize(("params", "error"), [
    ({"limit": "0"}, "parameter 'limit': 0 is out of range (valid: 1..5000)"),
    ({"limit": "5001"}, "parameter 'limit': 5001 is out of range (valid: 1..5000)"),
    ({"limit": "x"}, "parameter 'limit': 'x' is not an integer"),
    ({"cursor": "1.2"}, "parameter 'cursor': '1.2' is not a cursor of this agent"),
    ({"cursor": "a.b.c"}, "parameter 'cursor': 'a.b.c' is not a cursor of this agent"),
])
def test_bad_paging_parameters_are_named(served, params, error):
    store, url = served
    store.add(rep(0))
    r = requests.get(f"{url}/api/v1/steps", params={"job": "j", **params}, timeout=5)
    assert r.status_code == 400 and error in r.json()["error"]


def test_the_rules_engine_stream_reads_every_page(served, monkeypatch):
    store, url = served
    monkeypatch.setattr(server_mod, "MAX_PAGE_RECORDS", 7)
    for step in range(50):
        store.add(rep(step))
    stream = StepStream(url, "j")
    assert stream.poll() == 50
    assert [p.step for p in stream.steps] == list(range(50))
    assert [p.batch for p in stream.steps] == list(range(50))
    store.add(rep(50))
    assert stream.poll() == 1


def test_nan_losses_page_as_strict_json(served):
    store, url = served
    store.add(StepReport(Identity("j", 0, 1), 0, float("nan"), 1, float("inf"), None, 1.0))
    text = requests.get(f"{url}/api/v1/steps", params={"job": "j"}, timeout=5).text
    body = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert body["steps"][0]["loss"] == "NaN" and body["steps"][0]["grad_norm"] == "Infinity"
