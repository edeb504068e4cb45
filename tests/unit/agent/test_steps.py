"""Batch indices in the step ring and the step stream: kept when valid, never fatal."""

from __future__ import annotations

import logging
import math
import time

import pytest
import requests

from sentinel.agent.exporter import Agent
from sentinel.agent.server import HttpServer
from sentinel.agent.steps import MAX_BATCH_INDEX, StepStore, batch_index
from sentinel.protocol import Identity, StepReport
from sentinel.train.reporter import Reporter
from tests.support.collectors import make_ctx


def report(step: int, rank: int = 0, **extra: float) -> StepReport:
    # As sentinel.protocol.decode gives them: extras are floats.
    return StepReport(Identity("j", rank, 42, "GPU-x", "h"), step, 2.0, 100, None, None,
                      float(step), extra={k: float(v) for k, v in extra.items()})


@pytest.mark.parametrize(
    ("raw", "expect"),
    [(0.0, 0), (7.0, 7), (float(MAX_BATCH_INDEX), MAX_BATCH_INDEX), (None, None),
     (-1.0, None), (3.5, None), (math.nan, None), (math.inf, None), (-math.inf, None),
     (1e300, None), (float(MAX_BATCH_INDEX) * 2, None)],
)
def test_batch_index_accepts_whole_numbers_in_range_only(raw, expect):
    assert batch_index(raw) == expect


def test_the_ring_keeps_the_batch_and_a_bad_one_costs_only_itself(caplog):
    s = StepStore()
    with caplog.at_level(logging.WARNING, logger="sentinel.agent.steps"):
        assert s.add(report(0, batch=0))
        assert s.add(report(1, batch=5))  # batch 1..4 skipped
        assert s.add(report(2))  # a job that does not report batches
        assert s.add(report(3, batch=-1))
        assert s.add(report(4, batch=2.5))
        assert s.add(report(5, batch=math.nan))
        assert s.add(report(6, batch=1e300))
        assert s.add(report(7, batch=8))
        assert s.add(report(0, rank=1, batch=-3))
    recs = s.steps("j", 0, rank=0)
    assert [(r["step"], r["batch"]) for r in recs] == [
        (0, 0), (1, 5), (2, None), (3, None), (4, None), (5, None), (6, None), (7, 8)]
    assert all(r["loss"] == 2.0 and r["tokens"] == 100 for r in recs)  # steps kept whole
    assert s.jobs["j"].ranks[0].step == 7
    # Logged once per rank that sent one, naming the value and what is valid.
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "job j rank 0: step 3 has batch=-1.0, which is not a batch index" in warnings[0]
    assert "(valid: a whole number 0..2**53)" in warnings[0]
    assert "rank 1" in warnings[1]


@pytest.fixture
def agent_url(tmp_path):
    ctx = make_ctx(tmp_path, collectors=["training"])
    agent = Agent(ctx)
    agent.start()
    http = HttpServer("127.0.0.1", 0, agent)
    http.start()
    try:
        yield agent, f"http://127.0.0.1:{http.address[1]}", ctx.config.socket
    finally:
        http.stop()
        agent.close()


def test_steps_api_returns_the_batch_a_reporter_sent(agent_url):
    agent, url, sock = agent_url
    rep = Reporter(job="run", rank=0, socket_path=sock)
    batches: list[float | None] = [0, 1, 4, 5, None, -2, math.nan, 9]
    for step, b in enumerate(batches):
        extra = {} if b is None else {"batch": b}
        rep.step(step, loss=1.0, tokens=10, **extra)
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while agent.training.store.received < len(batches) and time.monotonic() < deadline:
        time.sleep(0.01)
    body = requests.get(f"{url}/api/v1/steps", params={"job": "run"}, timeout=5).json()
    assert [(s["step"], s["batch"]) for s in body["steps"]] == [
        (0, 0), (1, 1), (2, 4), (3, 5), (4, None), (5, None), (6, None), (7, 9)]
    assert rep.dropped == 0
    assert agent.health() == (True, "ok")
