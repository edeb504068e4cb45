"""The rules engine's step-exact source against a real agent fed by a real Reporter."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from sentinel.rules.detectors import loss_spike
from sentinel.rules.sources import SourceError, StepStream
from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent

pytestmark = pytest.mark.integration


def _report(rep: Reporter, start: int, losses: list[float]) -> None:
    # Real steps are milliseconds apart at least; a tight loop would overrun the kernel's
    # Unix datagram queue (net.unix.max_dgram_qlen, 10 on this CI machine) and be dropped.
    for step, loss in enumerate(losses, start=start):
        rep.step(step, loss=loss, tokens=4096, grad_norm=1.0)
        time.sleep(0.001)


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
        _report(rep, 0, losses[:300])
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
        _report(rep, 300, losses[300:])
        deadline = time.monotonic() + 10
        while len(stream.steps) < len(losses) and time.monotonic() < deadline:
            stream.poll()
            time.sleep(0.05)
        assert [p.step for p in stream.steps] == list(range(len(losses)))
        assert rep.dropped == 0

        window = stream.window(rule=None, now=time.time())  # type: ignore[arg-type]
        findings = loss_spike.detect(window, loss_spike.Params())
        assert len(findings) == 1
        f = findings[0]
        assert f.evidence["detected_step"] == 420
        assert f.step_start <= 420 <= f.step_end


def test_unknown_job_is_a_clear_source_error(tmp_path):
    with run_agent(tmp_path) as agent:
        with pytest.raises(SourceError, match="unknown job 'nope'"):
            StepStream(agent.url, "nope").poll()
