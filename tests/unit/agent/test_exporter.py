"""A slow or hung collector cannot stall the scrape, pile up threads or hide from /healthz."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from sentinel.agent.collectors import Collector
from sentinel.agent.exporter import Agent
from sentinel.agent.server import HttpServer
from sentinel.exposition import GaugeMetricFamily, MetricFamily
from tests.support.collectors import make_ctx
from tests.support.metrics import value

TIMEOUT_S = 0.5


class Blocking(Collector):
    """Blocks in collect until ``release`` is set, as a wedged NVML call would."""

    name = "stuck"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.release = threading.Event()
        self.calls = 0
        self.closed = False

    def collect(self) -> list[MetricFamily]:
        self.calls += 1
        self.release.wait(30)
        g = GaugeMetricFamily("sentinel_stuck_value", "Arrives once released.")
        g.add_metric([], 7.0)
        return [g]

    def close(self) -> None:
        self.closed = True


class Quick(Collector):
    """Returns at once, or after ``sleep`` seconds."""

    def __init__(self, ctx, name: str = "quick", sleep: float = 0.0) -> None:
        super().__init__(ctx)
        self.name = name  # type: ignore[misc] - instances named per test
        self.sleep = sleep
        self.ran: list[tuple[int, float]] = []  # (thread, monotonic start) of each collect

    def collect(self) -> list[MetricFamily]:
        self.ran.append((threading.get_ident(), time.monotonic()))
        time.sleep(self.sleep)
        g = GaugeMetricFamily(f"sentinel_{self.name}_value", "A value.")
        g.add_metric([], 1.0)
        return [g]


OTHERS: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _others() -> None:
    """Remember threads that exist before the test (other tests' agents)."""
    OTHERS.clear()
    OTHERS.update(threading.enumerate())


def collect_threads() -> list[threading.Thread]:
    """Return the collector worker threads this test started."""
    return [t for t in threading.enumerate()
            if t.name.startswith("sentinel-collect-") and t not in OTHERS]


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Agent, Blocking]]:
    ctx = make_ctx(tmp_path, collector_timeout_seconds=TIMEOUT_S, collect_stall_seconds=1.0)
    stuck = Blocking(ctx)
    agent = Agent(ctx, collectors=[Quick(ctx), stuck])
    server = HttpServer("127.0.0.1", 0, agent)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}", agent, stuck
    finally:
        stuck.release.set()
        server.stop()
        agent.close()


def scrape(url: str) -> tuple[str, float]:
    t0 = time.monotonic()
    r = requests.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text, time.monotonic() - t0


def test_a_hung_collector_is_left_out_and_the_scrape_returns_in_time(served):
    url, agent, stuck = served
    text, took = scrape(url)
    assert TIMEOUT_S <= took < TIMEOUT_S + 0.5
    assert value(text, "sentinel_collector_success", collector="quick") == 1
    assert value(text, "sentinel_quick_value") == 1
    assert value(text, "sentinel_collector_success", collector="stuck") == 0
    assert value(text, "sentinel_collector_timeouts_total", collector="stuck") == 1
    assert value(text, "sentinel_collector_timeouts_total", collector="quick") == 0
    assert value(text, "sentinel_collector_duration_seconds", collector="stuck") >= TIMEOUT_S
    assert "sentinel_stuck_value" not in text


def test_repeated_scrapes_do_not_start_another_collect_or_thread(served):
    url, agent, stuck = served
    scrape(url)
    for _ in range(10):
        text, took = scrape(url)
        # Still running from the first scrape: nothing to wait for, nothing new started.
        assert took < TIMEOUT_S
        assert value(text, "sentinel_collector_success", collector="stuck") == 0
        assert value(text, "sentinel_quick_value") == 1
    assert stuck.calls == 1
    assert sorted(t.name for t in collect_threads()) == ["sentinel-collect-quick",
                                                         "sentinel-collect-stuck"]
    assert value(text, "sentinel_collector_timeouts_total", collector="stuck") == 11
    assert value(text, "sentinel_collector_duration_seconds", collector="stuck") > TIMEOUT_S


def test_healthz_reports_a_collector_stuck_past_collect_stall_seconds(served):
    url, agent, stuck = served
    scrape(url)
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200  # slow, not stalled yet
    time.sleep(1.1)  # collect_stall_seconds is 1.0
    r = requests.get(f"{url}/healthz", timeout=5)
    assert r.status_code == 503
    assert "collector stuck has been collecting for" in r.text
    stuck.release.set()
    deadline = time.monotonic() + 5
    while agent.health()[0] is False and time.monotonic() < deadline:
        time.sleep(0.01)
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_collector_that_returns_again_is_back_on_the_next_scrape(served):
    url, agent, stuck = served
    scrape(url)
    stuck.release.set()
    deadline = time.monotonic() + 5
    while stuck.calls == 1 and time.monotonic() < deadline:
        text, _ = scrape(url)
        if value(text, "sentinel_collector_success", collector="stuck") == 1:
            break
    # The late result of the first collect is dropped; a fresh collect serves the scrape.
    assert stuck.calls == 2
    assert value(text, "sentinel_collector_success", collector="stuck") == 1
    assert value(text, "sentinel_stuck_value") == 7
    assert value(text, "sentinel_collector_timeouts_total", collector="stuck") == 1
    assert value(text, "sentinel_collector_duration_seconds", collector="stuck") < TIMEOUT_S


def test_collectors_run_concurrently(tmp_path):
    ctx = make_ctx(tmp_path, collector_timeout_seconds=5.0)
    agent = Agent(ctx, collectors=[Quick(ctx, f"slow{i}", sleep=0.4) for i in range(3)])
    try:
        t0 = time.monotonic()
        text = agent.render().decode()
        took = time.monotonic() - t0
    finally:
        agent.close()
    assert all(value(text, "sentinel_collector_success", collector=f"slow{i}") == 1
               for i in range(3))
    assert 0.4 <= took < 1.0  # one after another would take 1.2 s


def test_close_does_not_wait_for_or_close_a_hung_collector(tmp_path):
    ctx = make_ctx(tmp_path, collector_timeout_seconds=0.05)
    stuck = Blocking(ctx)
    quick = Quick(ctx)
    agent = Agent(ctx, collectors=[quick, stuck])
    agent.render()
    t0 = time.monotonic()
    agent.close()
    assert time.monotonic() - t0 < 2.0
    assert not stuck.closed  # closing it under its hung collect could hang shutdown
    assert [t.name for t in collect_threads()] == ["sentinel-collect-stuck"]
    stuck.release.set()
    deadline = time.monotonic() + 5
    while collect_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collect_threads() == []  # it exits once its collect returns


def test_fast_collectors_share_one_runner_thread(tmp_path):
    """The cost this saves: one thread hand-off per scrape, not one per collector."""
    ctx = make_ctx(tmp_path, collector_timeout_seconds=5.0)
    quick = [Quick(ctx, f"q{i}") for i in range(5)]
    agent = Agent(ctx, collectors=quick)
    try:
        for _ in range(20):
            text = agent.render().decode()
        assert all(value(text, "sentinel_collector_success", collector=f"q{i}") == 1
                   for i in range(5))
        assert len(collect_threads()) == 1
        assert len({ident for q in quick for ident, _ in q.ran}) == 1
    finally:
        agent.close()
    assert collect_threads() == []


def test_a_hung_collector_first_in_line_does_not_hold_up_the_others(tmp_path):
    ctx = make_ctx(tmp_path, collector_timeout_seconds=TIMEOUT_S)
    stuck = Blocking(ctx)
    quick = [Quick(ctx, "qa"), Quick(ctx, "qb")]
    agent = Agent(ctx, collectors=[stuck, *quick])
    try:
        t0 = time.monotonic()
        text = agent.render().decode()
        took = time.monotonic() - t0
        assert TIMEOUT_S <= took < TIMEOUT_S + 0.5
        assert value(text, "sentinel_collector_success", collector="stuck") == 0
        for q in quick:
            assert value(text, "sentinel_collector_success", collector=q.name) == 1
            # Handed to another runner once the hung one had run a quarter of the timeout.
            assert q.ran[0][1] - t0 < TIMEOUT_S / 4 + 0.2
        for _ in range(5):
            text = agent.render().decode()
            assert value(text, "sentinel_qb_value") == 1
        # The hung collect keeps its thread; the others share one more.
        assert sorted(t.name for t in collect_threads()) == ["sentinel-collect-qb",
                                                             "sentinel-collect-stuck"]
    finally:
        stuck.release.set()
        agent.close()


def test_threads_stay_bounded_by_the_collects_running(tmp_path):
    """Two hung collectors and a slow one, scraped again and again: no thread growth."""
    ctx = make_ctx(tmp_path, collector_timeout_seconds=0.2)
    hung = [Blocking(ctx), Blocking(ctx)]
    hung[1].name = "stuck2"  # type: ignore[misc]
    agent = Agent(ctx, collectors=[hung[0], Quick(ctx, "slow", sleep=0.1), hung[1], Quick(ctx)])
    try:
        for _ in range(15):
            text = agent.render().decode()
            assert len(collect_threads()) <= 4  # 2 hung + 1 slow + 1 idle at most
        assert value(text, "sentinel_collector_success", collector="quick") == 1
        assert value(text, "sentinel_collector_success", collector="slow") == 1
        assert [h.calls for h in hung] == [1, 1]
        assert value(text, "sentinel_collector_timeouts_total", collector="stuck2") == 15
    finally:
        for h in hung:
            h.release.set()
        agent.close()
    deadline = time.monotonic() + 5
    while collect_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collect_threads() == []


def test_render_records_where_the_scrape_time_went(tmp_path):
    """Agent.phases splits the last scrape into collect, agent families and render."""
    ctx = make_ctx(tmp_path)
    agent = Agent(ctx, collectors=[Quick(ctx, "slow", sleep=0.05)])
    try:
        t0 = time.perf_counter()
        agent.render()
        wall = time.perf_counter() - t0
    finally:
        agent.close()
    collect, own, render = agent.phases
    assert collect >= 0.05  # the collect phase waits for the 50 ms collect
    assert 0 < own < 0.05 and 0 < render < 0.05
    assert collect + own + render <= wall


def _series(text: str) -> list[str]:
    """Return each sample line's name and labels (a repeat would be a stale series)."""
    return [ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_the_agent_families_are_kept_but_hold_only_this_scrapes_values(tmp_path):
    """The agent's own families are reused across scrapes: never a value of an earlier one."""
    ctx = make_ctx(tmp_path, collector_timeout_seconds=0.2)
    slow = Quick(ctx, "slow", sleep=0.0)
    agent = Agent(ctx, collectors=[Quick(ctx, "fast"), slow])
    try:
        first_families = agent.collect_families()
        first = agent.render().decode()
        slow.sleep = 0.5  # misses the 0.2 s timeout from now on
        second = agent.render().decode()
        third_families = agent.collect_families()
    finally:
        slow.sleep = 0.0
        agent.close()
    # The same objects, reset and refilled.
    assert all(a is b for a, b in zip(first_families[:4], third_families[:4], strict=True))
    for text in (first, second):
        assert len(_series(text)) == len(set(_series(text)))
        assert text.count("sentinel_collector_success{") == 2
    assert value(first, "sentinel_collector_success", collector="slow") == 1
    assert value(second, "sentinel_collector_success", collector="slow") == 0
    assert value(first, "sentinel_collector_timeouts_total", collector="slow") == 0
    assert value(second, "sentinel_collector_timeouts_total", collector="slow") == 1
    assert value(second, "sentinel_collector_duration_seconds", collector="slow") >= 0.2
    assert "sentinel_slow_value" in first and "sentinel_slow_value" not in second
    assert value(second, "sentinel_agent_info", hostname="node1") == 1
