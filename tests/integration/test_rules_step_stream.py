"""The rules engine's step-exact source against a real agent fed by a real Reporter."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from sentinel.rules.detectors import loss_spike
from sentinel.rules.sources import SourceError, StepStream
from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent

pytestmark = pytest.mark.integration


def _report(rep: Reporter, start: int, losses: list[float],
            batch: Callable[[int], int] | None = None) -> None:
    # Real steps are milliseconds apart at least; a tight loop would overrun the kernel's
    # Unix datagram queue (net.unix.max_dgram_qlen, 10 on this CI machine) and be dropped.
    # On a loaded machine the agent can still fall that far behind: the Reporter then
    # drops the report (it never blocks a training loop) and the test sends it again, so
    # what is checked is the stream, not the machine's load.
    for step, loss in enumerate(losses, start=start):
        extra = {} if batch is None else {"batch": batch(step)}
        for _attempt in range(100):
            before = rep.dropped
            rep.step(step, loss=loss, tokens=4096, grad_norm=1.0, **extra)
            if rep.dropped == before:
                break
            time.sleep(0.01)
        time.sleep(0.001)


def _batch_of(step: int) -> int:
    """Batch index of a step in a run that skipped batches 200..202 (a rollback before)."""
    return step if step < 200 else step + 3


def _losses(n: int = 600) -> list[float]:
    rng = np.random.default_rng(3)
    t = np.arange(n)
    x = np.log(2.0 + 6.0 * (1 + t / 100) ** -0.5) + rng.normal(0, 0.015, n)
    x[420:423] += 0.6  # a bad batch: three steps far above the trend
    return [float(math.exp(v)) for v in x]


def test_spike_reported_through_the_agent_is_found_at_its_step(tmp_path):
    losses = _losses()
    with run_agent(tmp_path) as agent:
        rep = Reporter(job="gpt", rank=0, socket_path=agent.socket_path)
        _report(rep, 0, losses[:300], _batch_of)
        stream = StepStream(agent.url, "gpt")
        deadline = time.monotonic() + 10
        while len(stream.steps) < 300 and time.monotonic() < deadline:
            try:
                stream.poll()
            except SourceError:  # 404 until the agent has read the job's first datagram
                pass
            time.sleep(0.05)
        assert len(stream.steps) == 300
        # The stream asks only for new steps: the second half arrives on later polls.
        _report(rep, 300, losses[300:], _batch_of)
        deadline = time.monotonic() + 10
        while len(stream.steps) < len(losses) and time.monotonic() < deadline:
            stream.poll()
            time.sleep(0.05)
        assert [p.step for p in stream.steps] == list(range(len(losses)))
        # The batch index each step reported comes back with it, past the skip too.
        assert [p.batch for p in stream.steps] == [_batch_of(s) for s in range(len(losses))]

        window = stream.window(rule=None, now=time.time())  # type: ignore[arg-type]
        findings = loss_spike.detect(window, loss_spike.Params())
        assert len(findings) == 1
        f = findings[0]
        assert f.evidence["detected_step"] == 420
        assert f.step_start <= 420 <= f.step_end
        # So the spike's steps name the exact batches a rollback should skip.
        spiked = [p.batch for p in stream.steps if f.step_start <= p.step <= f.step_end]
        assert 423 in spiked and spiked == list(range(f.step_start + 3, f.step_end + 4))


def test_unknown_job_is_a_clear_source_error(tmp_path):
    with run_agent(tmp_path) as agent:
        with pytest.raises(SourceError, match="unknown job 'nope'"):
            StepStream(agent.url, "nope").poll()


def _poll_until(stream: StepStream, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(stream.steps) < n and time.monotonic() < deadline:
        try:
            stream.poll()
        except SourceError:  # 404 until the agent has read the job's first datagram
            pass
        time.sleep(0.05)


def test_a_rank_reporting_a_step_after_a_poll_is_not_lost(tmp_path):
    with run_agent(tmp_path) as agent:
        r0 = Reporter(job="gpt", rank=0, socket_path=agent.socket_path)
        r1 = Reporter(job="gpt", rank=1, socket_path=agent.socket_path)
        for step in range(5):
            r0.step(step, loss=3.0, tokens=4096)
            r1.step(step, loss=3.0, tokens=4096)
            time.sleep(0.001)
        r0.step(5, loss=3.0, tokens=4096)
        stream = StepStream(agent.url, "gpt")
        _poll_until(stream, 11)
        assert len(stream.steps) == 11
        # Rank 1 finishes step 5 after the poll that saw rank 0's step 5.
        r1.step(5, loss=3.2, tokens=4096)
        _poll_until(stream, 12)
        assert [(p.step, p.rank) for p in stream.steps][-2:] == [(5, 0), (5, 1)]
        stream.poll()  # nothing new: nothing appended twice
        assert len(stream.steps) == 12


def test_a_job_rolled_back_to_earlier_steps_is_followed(tmp_path):
    with run_agent(tmp_path) as agent:
        rep = Reporter(job="gpt", rank=0, socket_path=agent.socket_path)
        _report(rep, 0, [3.0] * 100)
        stream = StepStream(agent.url, "gpt", probe_interval_s=0.0)
        _poll_until(stream, 100)
        assert len(stream.steps) == 100
        time.sleep(0.01)  # the rerun's report times are later than the first run's
        _report(rep, 90, [2.5] * 5)  # rolled back to step 90, still below step 99
        _poll_until(stream, 105)
        assert [p.step for p in stream.steps][99:] == [99, 90, 91, 92, 93, 94]
        assert [p.loss for p in stream.steps][100:] == [2.5] * 5
        # Past the old newest step, the rerun continues without gaps or repeats.
        _report(rep, 95, [2.5] * 10)
        _poll_until(stream, 115)
        assert [p.step for p in stream.steps][100:] == list(range(90, 105))


class _Clock:
    """The Reporter's clock, set by the test: steps stamped with simulated times."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return time.monotonic()


def test_a_throughput_drop_is_found_on_the_step_stream_within_10_s(tmp_path, monkeypatch):
    """Four ranks report through a real agent: 0.25 s steps, then 0.42 s from t0+200 s
    (40% fewer tokens/s) for a minute. The shipped throughput-steps rule, run by the
    online detector on the agent's stream, flags it within 10 s of its onset."""
    from sentinel.rules.online import OnlineDetector
    from sentinel.rules.rulefile import load_rules
    from sentinel.train import reporter as reporter_mod

    clock = _Clock(time.time() - 400.0)
    monkeypatch.setattr(reporter_mod, "time", clock)
    t0 = clock.t
    onset, end = t0 + 200.0, t0 + 260.0
    rng = np.random.default_rng(5)
    with run_agent(tmp_path) as agent:
        reps = [Reporter(job="gpt", rank=r, socket_path=agent.socket_path) for r in range(4)]
        t, step = t0, 0
        while t < t0 + 300.0:
            t += (0.25 / 0.6 if onset <= t < end else 0.25) * (1 + rng.uniform(-0.1, 0.1))
            step += 1
            for rep in reps:
                clock.t = t + float(rng.uniform(0, 0.01))
                for _attempt in range(100):
                    before = rep.dropped
                    rep.step(step, loss=2.0, tokens=4096, grad_norm=1.0)
                    if rep.dropped == before:
                        break
                    time.sleep(0.01)
            time.sleep(0.0005)
        rules = [r for r in load_rules() if r.name in ("throughput-steps", "diagnosis")]
        stream = StepStream(agent.url, "gpt")
        deadline = time.monotonic() + 20
        while len(stream.steps) < 4 * step and time.monotonic() < deadline:
            try:
                stream.poll()
            except SourceError:  # 404 until the agent has read the job's first datagram
                pass
            time.sleep(0.05)
        assert len(stream.steps) == 4 * step
        detector = OnlineDetector(rules, streams={"gpt": stream}, fetch_threads=1)
        out = detector.cycle(now=clock.t)
        assert detector.errors == {}
    drops = [f for f in out if f.kind == "throughput_drop"]
    assert len(drops) == 1, [f.summary for f in out]
    (f,) = drops
    assert abs(f.time_start - onset) <= 2.0 and f.evidence["flagged_at"] - onset <= 10.0
    assert f.state == "resolved" and abs(f.time_end - end) <= 10.0
    assert f.detected_step == step
    diag = [d for d in out if d.kind == "diagnosis"]
    assert [d.evidence["cause"] for d in diag] == ["job_wide_slowdown"]
