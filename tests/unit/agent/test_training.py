"""The training collector: store bounds, rates, histogram, real sockets, fuzzing."""

from __future__ import annotations

import math
import os
import pickle
import socket
import struct
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel import protocol
from sentinel.agent.collectors.training import TrainingCollector
from sentinel.agent.exporter import Agent
from sentinel.agent.server import HttpServer
from sentinel.agent.steps import StepStore
from sentinel.protocol import Identity, StepReport
from sentinel.train.reporter import Reporter
from tests.support.collectors import make_ctx, render_collector
from tests.support.metrics import value
from tests.support.services import free_port
from tests.support.strictjson import strict_loads


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rep(job="j", rank=0, step=0, loss=1.0, tokens=100, t=0.0, gn=None, samples=None):
    return StepReport(Identity(job, rank, 42, "GPU-x", "h"), step, loss, tokens, gn, samples, t)


def test_tokens_per_second_over_the_window_and_dropping_to_zero_when_stalled():
    clk = Clock()
    s = StepStore(rate_window=10.0, monotonic=clk)
    for i in range(20):  # 1 step/s, 1000 tokens each
        s.add(rep(step=i, tokens=1000, t=float(i)))
        clk.t += 1.0
    st_ = s.jobs["j"].ranks[0]
    assert s.tokens_per_second(st_, clk.t) == pytest.approx(1000.0, rel=0.11)
    clk.t += 30
    assert s.tokens_per_second(st_, clk.t) == 0.0


def test_young_rank_rate_is_not_diluted_by_the_full_window():
    clk = Clock()
    s = StepStore(rate_window=30.0, monotonic=clk)
    s.add(rep(step=0, tokens=500))
    clk.t += 1.0
    s.add(rep(step=1, tokens=500))
    clk.t += 1.0
    assert s.tokens_per_second(s.jobs["j"].ranks[0], clk.t) == pytest.approx(500.0)


def test_a_rank_running_again_after_finishing_is_not_diluted_by_its_stop():
    """A requeued job on the same node: its tokens/s counts from its new start."""
    from sentinel.protocol import EVENT_FINISHED, EventReport

    clk = Clock()
    s = StepStore(rate_window=10.0, monotonic=clk)
    for i in range(20):
        s.add(rep(step=i, tokens=1000, t=float(i)))
        clk.t += 1.0
    s.add(EventReport(Identity("j", 0, 42, "GPU-x", "h"), EVENT_FINISHED, clk.t, {}))
    clk.t += 25.0  # requeued: down for 25 s
    s.add(rep(step=10, tokens=1000, t=clk.t))
    clk.t += 1.0
    s.add(rep(step=11, tokens=1000, t=clk.t))
    clk.t += 1.0
    st_ = s.jobs["j"].ranks[0]
    assert st_.finished_at is None
    assert s.tokens_per_second(st_, clk.t) == pytest.approx(1000.0)


def test_rate_is_right_at_any_report_rate_in_fixed_memory():
    clk = Clock()
    s = StepStore(rate_window=30.0, monotonic=clk)
    for i in range(8000):  # 200 steps/s of 10 tokens for 40 s: 6000 reports per window
        s.add(rep(step=i, tokens=10, t=i / 200))
        clk.t += 1 / 200
    st_ = s.jobs["j"].ranks[0]
    size = len(pickle.dumps(st_.rate))
    assert s.tokens_per_second(st_, clk.t) == pytest.approx(2000.0, rel=0.01)
    for i in range(8000, 8100):  # a rank reporting a step every 10 s: same memory
        s.add(rep(step=i, tokens=10, t=i / 200))
        clk.t += 10
    assert len(pickle.dumps(st_.rate)) == size < 4096
    assert s.tokens_per_second(st_, clk.t) == pytest.approx(10 * 3 / 30, rel=0.34)


def test_step_duration_histogram_uses_report_times(tmp_path):
    c = TrainingCollector(make_ctx(tmp_path))
    for i, t in enumerate([0.0, 0.2, 0.4, 3.4]):
        c.store.add(rep(step=i, t=t))
    text = render_collector(c)
    lab = {"job": "j", "rank": "0", "hostname": "node1"}
    assert value(text, "sentinel_train_step_duration_seconds_count", **lab) == 3
    assert value(text, "sentinel_train_step_duration_seconds_sum", **lab) == pytest.approx(3.4)
    assert value(text, "sentinel_train_step_duration_seconds_bucket", le="0.25", **lab) == 2
    assert value(text, "sentinel_train_step_duration_seconds_bucket", le="5.0", **lab) == 3
    assert value(text, "sentinel_train_rank_info", pid="42", UUID="GPU-x", **lab) == 1
    assert value(text, "sentinel_train_job_info", job="j", ranks="1") == 1


def test_bounds_drop_and_count_by_reason():
    clk = Clock()
    s = StepStore(ring_size=10, max_jobs=2, max_ranks=2, expiry=60, monotonic=clk)
    for i in range(25):
        s.add(rep(step=i))
    assert len(s.jobs["j"].ring) == 10
    assert [r["step"] for r in s.steps("j", 0)] == list(range(15, 25))
    assert s.add(rep(job="k"))
    assert not s.add(rep(job="third"))
    assert s.dropped["too_many_jobs"] == 1
    s.add(rep(rank=1))
    assert not s.add(rep(rank=2))
    assert s.dropped["too_many_ranks"] == 1
    clk.t += 61  # both jobs go stale; a new job then fits
    assert s.add(rep(job="third"))
    assert s.job_names() == ["third"]


def test_steps_are_ordered_by_step_then_rank_and_filtered():
    s = StepStore()
    for step in (3, 1, 2):
        for r in (1, 0):
            s.add(rep(step=step, rank=r))
    assert [(x["step"], x["rank"]) for x in s.steps("j", 2)] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert [(x["step"], x["rank"]) for x in s.steps("j", 0, rank=1)] == [(1, 1), (2, 1), (3, 1)]
    with pytest.raises(KeyError):
        s.steps("nope", 0)


def test_steps_returns_copies_so_callers_cannot_corrupt_the_ring():
    s = StepStore()
    s.add(rep(step=1, loss=math.nan))
    s.steps("j", 0)[0]["loss"] = "NaN"
    assert math.isnan(s.steps("j", 0)[0]["loss"])


@pytest.fixture
def running(tmp_path):
    """A real agent (training collector + HTTP) on a tmp socket, UDP and a free port."""
    udp_port = free_port()
    ctx = make_ctx(tmp_path, collectors=["training"], udp_address=f"127.0.0.1:{udp_port}",
                   socket_rcvbuf_bytes=1 << 20)
    agent = Agent(ctx)
    agent.start()
    http = HttpServer("127.0.0.1", 0, agent)
    http.start()
    url = f"http://127.0.0.1:{http.address[1]}"
    try:
        yield agent, url, ctx
    finally:
        http.stop()
        agent.close()


def wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.002)


def test_reporter_steps_reach_metrics_and_the_step_stream(running):
    agent, url, ctx = running
    r = Reporter(job="run1", rank=3, socket_path=ctx.config.socket, gpu_uuid="GPU-abc")
    for i in range(5):
        r.step(i, loss=2.0 - i * 0.1, tokens=4096, grad_norm=1.5, samples=8)
    r.step(5, loss=float("nan"), tokens=4096, grad_norm=float("inf"))
    r.event("checkpoint_saved", step=5)
    store = agent.training.store
    assert wait_for(lambda: store.received >= 7)
    text = requests.get(f"{url}/metrics", timeout=5).text
    lab = {"job": "run1", "rank": "3"}
    assert value(text, "sentinel_train_step", **lab) == 5
    assert math.isnan(value(text, "sentinel_train_loss", **lab))
    assert value(text, "sentinel_train_loss_finite", **lab) == 0
    assert value(text, "sentinel_train_tokens_total", **lab) == 6 * 4096
    assert value(text, "sentinel_train_samples_total", **lab) == 40
    assert value(text, "sentinel_train_events_total", kind="checkpoint_saved", **lab) == 1
    assert value(text, "sentinel_train_rank_info", UUID="GPU-abc", pid=str(os.getpid())) == 1
    assert value(text, "sentinel_train_seconds_since_last_report", **lab) < 5
    assert value(text, "sentinel_train_tokens_per_second", **lab) > 0
    body = strict_loads(requests.get(f"{url}/api/v1/steps", params={"job": "run1", "since": 4},
                                     timeout=5).text)
    assert body["job"] == "run1"
    assert [s["step"] for s in body["steps"]] == [4, 5]
    last = body["steps"][-1]
    assert last["loss"] == "NaN" and last["grad_norm"] == "Infinity"
    assert last["rank"] == 3 and last["tokens"] == 4096 and last["samples"] is None
    assert isinstance(last["time"], float) and last["host"]
    assert body["steps"][0]["loss"] == pytest.approx(1.6)
    # Asking again gives the same answer: serving must not rewrite the ring's NaN
    # (a second read of a NaN step once closed the connection without a response).
    again = requests.get(f"{url}/api/v1/steps", params={"job": "run1", "since": 4},
                         timeout=5)
    assert again.status_code == 200 and again.json() == body
    assert math.isnan(value(requests.get(f"{url}/metrics", timeout=5).text,
                            "sentinel_train_loss", **lab))
    r.step(6, loss=1.2, tokens=4096)
    assert wait_for(lambda: store.received >= 8)
    assert value(requests.get(f"{url}/metrics", timeout=5).text,
                 "sentinel_train_loss_finite", **lab) == 1


def test_steps_api_errors(running):
    agent, url, ctx = running
    Reporter(job="a", socket_path=ctx.config.socket).step(0, loss=1.0, tokens=1)
    assert wait_for(lambda: agent.training.store.received >= 1)
    r = requests.get(f"{url}/api/v1/steps", params={"job": "zzz"}, timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "unknown job 'zzz' (known: a)"}
    r = requests.get(f"{url}/api/v1/steps", timeout=5)
    assert r.status_code == 400 and "job" in r.json()["error"]
    r = requests.get(f"{url}/api/v1/steps", params={"job": "a", "since": "x"}, timeout=5)
    assert r.status_code == 400 and "'since'" in r.json()["error"]
    r = requests.get(f"{url}/api/v1/steps", params={"job": "a", "rank": "-1"}, timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{url}/api/v1/steps", params={"job": "a", "snice": "5"}, timeout=5)
    assert r.status_code == 400
    assert r.json() == {
        "error": "unknown parameter 'snice' (valid: job, since, rank, limit, cursor)"}
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def test_udp_fallback(running, tmp_path):
    agent, url, ctx = running
    r = Reporter(job="udpjob", socket_path=str(tmp_path / "absent.sock"),
                 udp=ctx.config.udp_address)
    r.step(7, loss=1.0, tokens=10)
    assert wait_for(lambda: "udpjob" in agent.training.store.job_names())


def test_malformed_datagrams_are_counted_by_reason(running):
    agent, url, ctx = running
    store = agent.training.store
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(ctx.config.socket)
    good = protocol.encode_step(
        protocol.header(protocol.TYPE_STEP, protocol.encode_identity(Identity("j", 0, 1))),
        1, 1.0, 1, None, None, 0.0)
    s.send(b"x")  # truncated
    s.send(b"XX" + good[2:])  # bad magic
    s.send(good[:2] + b"\x09" + good[3:])  # unknown version
    s.send(b"\0" * (protocol.MAX_DATAGRAM_BYTES + 100))  # too large
    s.send(good)
    s.close()
    assert wait_for(lambda: store.received >= 1 and sum(store.dropped.values()) >= 4)
    text = requests.get(f"{url}/metrics", timeout=5).text
    for reason in ("truncated", "bad_magic", "unknown_version", "too_large"):
        assert value(text, "sentinel_train_datagrams_dropped_total", reason=reason) == 1
    assert value(text, "sentinel_train_datagrams_received_total") == 1


def _mutations():
    ident = protocol.encode_identity(Identity("fuzz", 0, 1, None, "h"))
    good = protocol.encode_step(protocol.header(protocol.TYPE_STEP, ident), 1, 1.0, 10, 2.0, 4,
                                1.0, {"lr": 0.1})
    flip = st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)).map(
        lambda p: good[: p[0]] + bytes([p[1]]) + good[p[0] + 1:])
    cut = st.integers(0, len(good)).map(lambda n: good[:n])
    hdr = st.binary(max_size=200).map(
        lambda b: struct.pack("<2sBBH", b"SN", 1, 1, len(b)) + b + b"\0" * 49)
    return st.one_of(st.binary(max_size=300), flip, cut, hdr)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_mutations(), min_size=1, max_size=20))
def test_fuzzed_datagrams_never_stop_the_agent(running, batch):
    agent, url, ctx = running
    store = agent.training.store
    before = store.received + sum(store.dropped.values())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(ctx.config.socket)
        for d in batch:
            s.send(d)
    assert wait_for(lambda: store.received + sum(store.dropped.values()) - before >= len(batch))
    assert agent.training.healthy()
    assert store.received + sum(store.dropped.values()) - before == len(batch)
    assert agent.training.collect()


def test_reports_dropped_by_the_reporter_are_exported(running, monkeypatch):
    """Reports lost on the sending side (agent away) show up once the agent is back."""
    import sentinel.train.reporter as reporter_mod

    agent, url, ctx = running
    monkeypatch.setattr(reporter_mod, "RECONNECT_INTERVAL_S", 0.0)
    r = Reporter(job="lossy", rank=1, socket_path=ctx.config.socket + ".elsewhere")
    for i in range(3):
        r.step(i, loss=1.0, tokens=10)  # nobody listens on that path: dropped
    assert r.dropped == 3
    r.socket_path = ctx.config.socket  # the agent is reachable again
    r.close()
    r.step(3, loss=1.0, tokens=10)
    r.step(4, loss=1.0, tokens=10)
    store = agent.training.store
    assert wait_for(lambda: store.received >= 2)
    text = requests.get(f"{url}/metrics", timeout=5).text
    assert value(text, "sentinel_train_reporter_dropped_total", job="lossy", rank="1") == 3


def test_reporter_dropped_stays_monotonic_across_a_process_restart():
    store = StepStore(ring_size=100, max_jobs=4, max_ranks=4)
    key = protocol.EXTRA_REPORTER_DROPPED
    for pid, told in ((100, 2.0), (100, 5.0), (200, 1.0)):  # pid 200: the rank restarted
        ident = Identity(job="j", rank=0, pid=pid)
        store.add(StepReport(identity=ident, step=1, loss=1.0, tokens=1, grad_norm=None,
                             samples=None, time=1.0, extra={key: told}))
    st = store.jobs["j"].ranks[0]
    assert st.reporter_dropped_base + st.reporter_dropped_last == 6


def test_a_finished_rank_stops_its_live_series_and_the_job_is_forgotten(tmp_path):
    """A job that ends on purpose raises no stalled-job or throughput alert."""
    clock = Clock()
    ctx = make_ctx(tmp_path, collectors=["training"])
    ctx.monotonic = clock
    c = TrainingCollector(ctx)
    store = c.store
    store.monotonic = clock
    for r in (0, 1):
        store.add(rep(job="done", rank=r, step=10, t=1.0))
    store.add(protocol.EventReport(Identity("done", 0, 42, "GPU-x", "h"), "finished", 2.0))
    text = render_collector(c)
    # Rank 0 finished: no age or tokens/sec for it; rank 1 still runs.
    assert "sentinel_train_seconds_since_last_report{" in text
    assert value(text, "sentinel_train_tokens_per_second", job="done", rank="1") >= 0
    assert 'sentinel_train_seconds_since_last_report{hostname="node1",job="done",rank="0"}' \
        not in text
    assert 'sentinel_train_tokens_per_second{hostname="node1",job="done",rank="0"}' not in text
    assert value(text, "sentinel_train_step", job="done", rank="0") == 10  # history stays
    # Once every rank has finished, the job goes after the grace period, not the expiry.
    store.add(protocol.EventReport(Identity("done", 1, 42, "GPU-x", "h"), "finished", 3.0))
    clock.t += 60
    assert store.expire() == []
    clock.t += 100
    assert store.expire() == ["done"]


def test_a_rank_that_reports_again_after_finishing_is_live_again():
    clock = Clock()
    store = StepStore(ring_size=100, max_jobs=4, max_ranks=4, monotonic=clock)
    store.add(rep(job="j", step=1))
    store.add(protocol.EventReport(Identity("j", 0, 42, "GPU-x", "h"), "finished", 2.0))
    assert store.jobs["j"].ranks[0].finished_at is not None
    store.add(rep(job="j", step=2))
    assert store.jobs["j"].ranks[0].finished_at is None


def test_every_drop_reason_is_documented_in_metrics_md():
    from pathlib import Path

    from sentinel.agent.steps import ALL_DROP_REASONS

    doc = (Path(__file__).resolve().parents[3] / "docs" / "METRICS.md").read_text()
    row = next(line for line in doc.splitlines()
               if line.startswith("| `sentinel_train_datagrams_dropped_total`"))
    assert [r for r in ALL_DROP_REASONS if f"`{r}`" not in row] == []


def test_data_wait_from_the_reporter_is_exported_per_rank(tmp_path):
    """Reporter.step(data_s=) goes through the real datagram encoding into the counters."""
    c = TrainingCollector(make_ctx(tmp_path))
    waits = [0.01, 0.02, 1.5]
    reporter = Reporter(job="j", rank=0, socket_path=str(tmp_path / "none.sock"))
    for i, w in enumerate(waits):
        # What the Reporter would send, decoded as the agent decodes it.
        data = protocol.encode_step(reporter._step_prefix, i, 2.0, 100, None, None,
                                    float(i), {protocol.EXTRA_DATA_S: w})
        report = protocol.decode(data)
        assert isinstance(report, StepReport)
        c.store.add(report)
    c.store.add(rep(job="other", step=0))  # a job without it exports none
    text = render_collector(c)
    lab = {"job": "j", "rank": "0", "hostname": "node1"}
    assert value(text, "sentinel_train_data_wait_seconds_total", **lab) == pytest.approx(1.53)
    assert value(text, "sentinel_train_data_wait_steps_total", **lab) == 3
    assert 'sentinel_train_data_wait_seconds_total{job="other"' not in text
    # Each step keeps its own wait in the step stream (the detectors' per-step input).
    assert [r["data_s"] for r in c.store.steps("j", 0)] == waits
    assert [r["data_s"] for r in c.store.steps("other", 0)] == [None]


def test_reporter_step_sends_data_s_as_the_extra(tmp_path):
    path = str(tmp_path / "r.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    try:
        r = Reporter(job="j", rank=0, socket_path=path)
        r.step(3, loss=2.0, tokens=10, data_s=0.25)
        report = protocol.decode(srv.recv(4096))
        assert isinstance(report, StepReport) and report.extra[protocol.EXTRA_DATA_S] == 0.25
    finally:
        srv.close()


def test_rank_label_sets_follow_the_ranks_across_scrapes(tmp_path, monkeypatch):
    """Label sets kept per rank give each rank its own values; gone ranks drop theirs."""
    import sentinel.agent.collectors.training as training

    clock = Clock()
    ctx = make_ctx(tmp_path, collectors=["training"])
    ctx.monotonic = clock
    c = TrainingCollector(ctx)
    c.store.monotonic = clock
    durations = {("a", 0): [0.02, 0.3], ("a", 1): [7.0], ("a", 2): [0.2, 0.2, 400.0],
                 ("b", 0): [1.5]}
    for (job, r), ds in durations.items():
        t = 0.0
        for i, d in enumerate([0.0, *ds]):
            t += d
            c.store.add(rep(job=job, rank=r, step=100 * r + i, t=t, tokens=10 + r))
    for _ in range(2):
        c.store.add(protocol.EventReport(Identity("a", 1, 42, "GPU-x", "h"), "ckpt", 1.0))

    def check(text: str, jobs: dict) -> None:
        for (job, r), ds in jobs.items():
            lab = {"job": job, "rank": str(r), "hostname": "node1"}
            assert value(text, "sentinel_train_step", **lab) == 100 * r + len(ds)
            assert value(text, "sentinel_train_tokens_total", **lab) == (10 + r) * (len(ds) + 1)
            hist = "sentinel_train_step_duration_seconds"
            assert value(text, hist + "_count", **lab) == len(ds)
            assert value(text, hist + "_sum", **lab) == pytest.approx(sum(ds))
            for le in ("0.025", "0.25", "2.5", "10.0", "300.0", "+Inf"):
                want = sum(d <= float(le) for d in ds)
                assert value(text, hist + "_bucket", le=le, **lab) == want
        assert value(text, "sentinel_train_events_total", job="a", rank="1", kind="ckpt") == 2

    first = render_collector(c)
    check(first, durations)
    assert render_collector(c) == first  # the kept label sets write the same text
    assert set(c._rank_labels) == {(j, str(r), "node1") for j, r in durations}
    monkeypatch.setattr(training, "MAX_CACHED_RANKS", 1)
    assert render_collector(c) == first  # built afresh past the bound: the same
    assert len(c._rank_labels) == 1
    monkeypatch.undo()
    c.store.add(protocol.EventReport(Identity("b", 0, 42, "GPU-x", "h"), "finished", 2.0))
    clock.t += 1000
    assert c.store.expire() == ["b"]
    del durations[("b", 0)]
    text = render_collector(c)
    check(text, durations)
    assert 'job="b"' not in text
    assert set(c._rank_labels) == {(j, str(r), "node1") for j, r in durations}
