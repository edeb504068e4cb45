"""Live: a real agent's node sees another process on the job's GPU as the steps slow down;
the online detector names GPU contention within 10 s of the drop's onset.

A real ``sentinel agent`` process with a replayed GPU (``--gpu-replay``: the captured
H100 dump, which the agent's NVML wrapper reads as it reads a real GPU) and its
default collectors; a real Reporter sends a step every 50 ms over the agent's socket.
Mid-run the test does what a competing job does: a second compute process appears on
GPU 0 (the replay file is rewritten; the agent follows it) and each step takes 70% longer.
The shipped rules (``throughput-steps`` and ``diagnosis``) run in an OnlineDetector on
the agent's step stream at the deployed settings (the controller's default 15 s cycle:
the step rule's own cadence, 2 s, between cycles), driven as the daemon drives it: each
evaluation when the next rule is due. The finding must be emitted within 10 s of the
onset, by its ``detected_at`` and by the wall clock when the evaluation returned it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from sentinel.controller.config import ControllerConfig
from sentinel.gpu.nvml_replay import H100_LOAD
from sentinel.rules.online import OnlineDetector
from sentinel.rules.rulefile import load_rules
from sentinel.rules.sources import SourceError, StepStream
from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent

pytestmark = pytest.mark.integration

STEP_S = 0.05
SLOW = 1.7  # a step with another process on the GPU: 41% fewer tokens/s
HEALTHY_S = 14.0  # the rule's baseline needs ~10 s of seconds before a drop


def _write(path, dump) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(dump))
    os.replace(tmp, path)  # whole, so the agent never reads half a file


class _Job:
    """A training loop in a thread: a step every STEP_S (SLOW times that once slowed)."""

    def __init__(self, rep: Reporter) -> None:
        self.rep, self.slow, self.stop = rep, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        step, t = 0, time.monotonic()
        while not self.stop.is_set():
            t += STEP_S * (SLOW if self.slow.is_set() else 1.0)
            time.sleep(max(0.0, t - time.monotonic()))
            self.rep.step(step, loss=2.0, tokens=4096, grad_norm=1.0, data_s=0.002)
            step += 1


def test_another_process_on_the_jobs_gpu_is_named_within_10_s_live(tmp_path):
    dump = json.loads(H100_LOAD.read_text())
    gpu0 = dump["devices"][0]
    uuid = gpu0["uuid"]
    gpu0["compute_processes"] = [{"pid": os.getpid(), "used_memory": 1 << 30}]
    replay = tmp_path / "gpu.json"
    _write(replay, dump)
    with run_agent(tmp_path, ["--gpu-replay", str(replay)]) as agent:
        job = _Job(Reporter(job="gpt", rank=0, socket_path=agent.socket_path, gpu_uuid=uuid))
        job.thread.start()
        try:
            rules = [r for r in load_rules() if r.name in ("throughput-steps", "diagnosis")]
            deployed = ControllerConfig().interval_seconds
            assert deployed == 15.0  # the deployed cycle, not one shortened for the test
            detector = OnlineDetector(rules, streams={"gpt": StepStream(agent.url, "gpt")},
                                      fetch_threads=1, interval_s=deployed)
            begun = time.time()
            changes = []
            emitted = None
            onset = None
            while time.time() - begun < HEALTHY_S + 15.0:
                due = detector.next_due()
                assert due is not None
                wake = due if onset is not None else min(due, begun + HEALTHY_S)
                time.sleep(max(0.0, wake - time.time()))
                if onset is None and time.time() - begun >= HEALTHY_S:
                    # Another job's process starts on GPU 0 and takes its share of it.
                    gpu0["compute_processes"].append({"pid": 1, "used_memory": 8 << 30})
                    _write(replay, dump)
                    onset = time.time()
                    job.slow.set()
                    continue
                try:
                    changes += detector.cycle()
                except SourceError:  # the job's first datagram not read yet
                    continue
                if any(f.kind == "diagnosis" for f in changes):
                    emitted = time.time()
                    break
        finally:
            job.stop.set()
            job.thread.join(timeout=5)
    assert onset is not None
    drops = [f for f in changes if f.kind == "throughput_drop"]
    diags = [f for f in changes if f.kind == "diagnosis"]
    assert drops and diags, [f.summary for f in changes]
    first = diags[0]
    # The first emission names the cause, the node and the GPU: not "job-wide software".
    assert first.evidence["cause"] == "gpu_contention", first.summary
    assert (first.node, first.gpu) == (socket.gethostname(), "0")
    assert first.detected_at is not None and first.detected_at - onset < 10.0, (
        first.detected_at - onset, first.summary)
    assert emitted is not None and emitted - onset < 10.0, emitted - onset
    assert abs(drops[0].time_start - onset) <= 3.0
    assert all(f.time_start >= onset - 3.0 for f in drops)  # no alarm before the onset
