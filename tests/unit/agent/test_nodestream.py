"""The agent's per-second node records: sampled from the disk sampler and NVML, served
on /api/v1/node in the detector-input format, read back by the step stream."""

from __future__ import annotations

import copy
import json

import pytest
import requests

from sentinel.agent.collectors.disk_stall import DiskStallCollector
from sentinel.agent.collectors.gpu import GpuCollector
from sentinel.agent.exporter import Agent
from sentinel.agent.nodestream import NODE_RING_SECONDS, NodeRing, NodeSample, NodeSampler
from sentinel.agent.server import HttpServer
from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend
from sentinel.protocol import Identity, StepReport
from sentinel.rules.jsonl import node_record
from sentinel.rules.sources import StepStream
from sentinel.rules.window import NodePoint
from tests.support.collectors import diskstats_line, make_ctx


def two_gpus(procs0: int, reasons1: int) -> dict:
    """The H100 dump as a two-GPU node: ``procs0`` processes on GPU 0, reasons on GPU 1."""
    dump = json.loads(H100_LOAD.read_text())
    second = copy.deepcopy(dump["devices"][0])
    second.update(uuid="GPU-second", index=1, clocks_event_reasons=reasons1)
    dump["devices"].append(second)
    dump["device_count"] = 2
    dump["devices"][0]["compute_processes"] = [{"pid": 100 + i} for i in range(procs0)]
    dump["devices"][1]["compute_processes"] = [{"pid": 200}]
    return dump


UUID0 = json.loads(H100_LOAD.read_text())["devices"][0]["uuid"]


def _diskstats(reads: int, read_ms: int, in_flight: int) -> str:
    # nvme1n1 idle all along: no reads, no latency.
    return (diskstats_line("nvme0n1", reads, read_ms, in_flight, 100)
            + diskstats_line("nvme1n1", 7, 3, 0, 3))


def test_a_sample_takes_the_disk_samplers_newest_second_and_each_gpus_nvml_fields(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    ctx = make_ctx(tmp_path, procfs=str(proc))
    clock = {"t": 0.0}
    ctx.monotonic = lambda: clock["t"]
    ctx.nvml_backend = ReplayBackend(two_gpus(procs0=2, reasons1=0x4 | 0x40))
    disk, gpu = DiskStallCollector(ctx), GpuCollector(ctx)
    gpu.start()
    try:
        ring = NodeRing()
        jobs: list[str] = []
        sampler = NodeSampler(ring, disk=disk.latest, gpus=gpu.quick,
                              active=lambda: bool(jobs), now=lambda: 1000.0 + clock["t"])
        for sec, (reads, ms, flight) in enumerate([(0, 0, 0), (100, 50, 1), (105, 1550, 40)]):
            (proc / "diskstats").write_text(_diskstats(reads, ms, flight))
            clock["t"] = float(sec)
            disk.sample()
            sampler.sample()
            if sec == 1:
                assert len(ring) == 0  # no job reports here: nothing sampled
                jobs.append("j")
        (got,) = ring.since(0.0)
    finally:
        gpu.close()
    # The newest second: 5 reads that took 1.5 s (300 ms each), 40 in flight; the idle
    # device has no latency and does not lower the worst one.
    assert got.time == 1002.0
    assert got.disk_read_latency_s == pytest.approx(0.3) and got.disk_in_flight == 40
    assert got.gpus == ((0, 2, 0x4), (1, 1, 0x4 | 0x40))
    assert sampler.uuids == {0: UUID0, 1: "GPU-second"}


def test_the_ring_keeps_the_newest_seconds_packed():
    ring = NodeRing(size=3)
    for t in range(5):
        ring.append(NodeSample(float(t), None if t % 2 else 0.002, t, ((0, 1, None),)))
    got = ring.since(2.0)
    assert [s.time for s in got] == [3.0, 4.0] and len(ring) == 3
    assert got[0] == NodeSample(3.0, None, 3, ((0, 1, None),))
    assert got[1].disk_read_latency_s == 0.002
    assert NODE_RING_SECONDS >= 600  # more than the step-stream rule's 10-minute window


@pytest.fixture
def served(tmp_path):
    """An agent (training + gpu on the two-GPU replay) serving HTTP; its node ring is
    filled by the test, its sampler thread not started."""
    ctx = make_ctx(tmp_path, collectors=["training", "gpu"])
    ctx.nvml_backend = ReplayBackend(two_gpus(procs0=2, reasons1=0x40 | 0x4))
    ctx.now = lambda: 9.0  # the sampler's samples are older than the test's
    agent = Agent(ctx)
    agent.collector("gpu").start()
    agent.node_sampler = agent._node_sampler()
    http = HttpServer("127.0.0.1", 0, agent)
    http.start()
    try:
        yield agent, f"http://127.0.0.1:{http.address[1]}"
    finally:
        http.stop()
        agent.close()


def _report(agent: Agent, job: str, rank: int, uuid: str, host: str = "gpu-node-7") -> None:
    agent.training.store.add(StepReport(Identity(job, rank, 4000 + rank, uuid, host), 1, 2.0,
                                        100, None, None, 1000.0))


def test_the_endpoint_serves_a_jobs_gpus_with_the_ranks_known_on_them(served):
    agent, url = served
    _report(agent, "j", 0, UUID0)
    _report(agent, "other", 0, "GPU-second")
    agent.node_sampler.sample()  # the replayed GPUs (their UUIDs), no disk collector
    for t in (10.0, 11.0, 12.0):
        agent.node_ring.append(NodeSample(t, 0.004 if t > 10 else None, 3,
                                          ((0, 2, 0x4), (1, 1, 0x40 | 0x4))))
    r = requests.get(f"{url}/api/v1/node", params={"job": "j", "since": "10.5"}, timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["job"] == "j" and [x["time"] for x in body["node"]] == [11.0, 12.0]
    # Job j runs on GPU 0 only: GPU 1 (another job's, throttling) is not its concern.
    assert body["node"][0] == {"node": "gpu-node-7", "time": 11.0, "disk_read_latency_s": 0.004,
                               "disk_in_flight": 3, "gpu_processes": {"0": 2},
                               "gpu_ranks": {"0": 1}}
    # Each record is a node record of the detector-input format (the one parser).
    assert node_record("r", body["node"][0]) == NodePoint(
        time=11.0, node="gpu-node-7", disk_read_latency_s=0.004, disk_in_flight=3,
        gpu_processes={"0": 2}, gpu_ranks={"0": 1})
    other = requests.get(f"{url}/api/v1/node", params={"job": "other", "since": "11.5"},
                         timeout=5).json()["node"]
    assert other[-1]["gpu_processes"] == {"1": 1} and other[-1]["gpu_ranks"] == {"1": 1}
    # Power capping is normal under load: only the bad reason is named.
    assert other[-1]["throttle_reasons"] == {"1": ["hw_thermal_slowdown"]}


@pytest.mark.parametrize(("params", "code", "error"), [
    ({"job": "nope"}, 404, "unknown job 'nope' (known: j)"),
    ({"since": "0"}, 400, "missing parameter 'job'"),
    ({"job": "j", "since": "soon"}, 400, "parameter 'since': 'soon' is not a time"),
    ({"job": "j", "since": "nan"}, 400, "is not a time (valid: unix seconds"),
    ({"job": "j", "limit": "3"}, 400, "unknown parameter 'limit' (valid: job, since)"),
])
def test_bad_node_requests_are_clear_errors(served, params, code, error):
    agent, url = served
    _report(agent, "j", 0, UUID0)
    r = requests.get(f"{url}/api/v1/node", params=params, timeout=5)
    assert r.status_code == code and error in r.json()["error"], r.text


def test_the_step_stream_reads_the_node_records_and_steps_with_their_input_wait(served):
    agent, url = served
    store = agent.training.store
    for step in range(3):
        store.add(StepReport(Identity("j", 0, 4000, UUID0, "gpu-node-7"), step, 2.0, 100,
                             None, None, 1000.0 + step, extra={"data_s": 0.25 * step}))
    agent.node_sampler.sample()  # at 9.0, from the replay: GPU 0 has 2 processes
    agent.node_ring.append(NodeSample(1001.5, 0.002, 1, ((0, 1, 0),)))
    stream = StepStream(url, "j")
    w = stream.window(rule=None, now=1003.0)  # type: ignore[arg-type]
    assert [p.data_s for p in w.steps] == [0.0, 0.25, 0.5]
    assert w.nodes[0] == NodePoint(time=9.0, node="gpu-node-7", gpu_processes={"0": 2},
                                   gpu_ranks={"0": 1})
    assert w.nodes[1:] == [NodePoint(time=1001.5, node="gpu-node-7", disk_read_latency_s=0.002,
                                 disk_in_flight=1, gpu_processes={"0": 1},
                                 gpu_ranks={"0": 1})]
    agent.node_ring.append(NodeSample(1002.5, None, 0, ((0, 2, 0),)))
    assert stream.poll_nodes() == 1  # only what is newer than what it has
    assert [n.time for n in stream.nodes] == [9.0, 1001.5, 1002.5]


def test_an_agent_without_node_records_leaves_the_steps_as_they_were(httpserver):
    """An agent from before /api/v1/node answers 404 "no such path": the stream reads the
    steps alone and asks again only after a while."""
    httpserver.expect_request("/api/v1/steps").respond_with_json(
        {"job": "j", "steps": [{"step": 0, "rank": 0, "loss": 1.0, "grad_norm": None,
                                "tokens": 1, "samples": None, "time": 5.0, "host": "n"}]})
    httpserver.expect_request("/api/v1/node").respond_with_json(
        {"error": "no such path '/api/v1/node' (valid: /metrics, /healthz, /api/v1/steps)"},
        status=404)
    clock = [0.0]
    stream = StepStream(httpserver.url_for(""), "j", monotonic=lambda: clock[0])
    w = stream.window(rule=None, now=10.0)  # type: ignore[arg-type]
    assert len(w.steps) == 1 and w.nodes == [] and w.steps[0].data_s is None
    stream.window(rule=None, now=11.0)  # type: ignore[arg-type]
    asked = [r for r, _ in httpserver.log if r.path == "/api/v1/node"]
    assert len(asked) == 1


def test_the_rules_of_one_evaluation_share_one_poll_of_the_agent(httpserver):
    """With steps rules every 2 s, each rule polling each endpoint would multiply the
    requests to every agent by the number of rules reading the stream."""
    httpserver.expect_request("/api/v1/steps").respond_with_json({"job": "j", "steps": []})
    httpserver.expect_request("/api/v1/node").respond_with_json({"job": "j", "node": []})
    stream = StepStream(httpserver.url_for(""), "j")
    for now in (10.0, 10.0, 12.0):  # two rules at 10, one at 12
        stream.window(rule=None, now=now)  # type: ignore[arg-type]
    paths = [r.path for r, _ in httpserver.log]
    assert paths.count("/api/v1/steps") == 2 and paths.count("/api/v1/node") == 2
