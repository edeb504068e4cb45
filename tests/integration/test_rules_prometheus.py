"""The rules engine queries a real Prometheus (backfilled) and diagnoses the problems."""

import time

import pytest

from bench.detectors import scenarios
from bench.detectors.openmetrics import backfill, backfill_rules, lines
from sentinel.gpu.reasons import CLOCK_EVENT_REASONS
from sentinel.rules.online import OnlineDetector
from sentinel.rules.rulefile import load_rules
from sentinel.rules.sources import PrometheusSource
from tests.support.services import need_binary, run_prometheus

pytestmark = pytest.mark.integration


def _families(sc):
    tps = [({"job": "gpt", "rank": "0", "hostname": s.labels["hostname"]}, s.points)
           for s in sc.series["tokens_per_sec"]]
    fams = [("sentinel_train_tokens_per_second", "gauge", tps)]
    reasons = []
    for s in sc.series.get("clock_event_reasons", []):
        base = {"hostname": s.labels["hostname"], "gpu": s.labels["gpu"], "UUID": s.labels["UUID"]}
        for reason in ("hw_slowdown", "sw_power_cap", "sw_thermal_slowdown"):
            bit = CLOCK_EVENT_REASONS[reason]
            reasons.append(({**base, "reason": reason},
                            [(t, 1.0 if int(v) & bit else 0.0) for t, v in s.points]))
    if reasons:
        fams.append(("sentinel_gpu_clock_event_active", "gauge", reasons))
    return fams


@pytest.mark.parametrize(
    ("make", "cause", "node"),
    [(scenarios.straggler, "straggler", "node05"),
     (scenarios.throttled_gpu, "throttling_gpu", "node03")],
    ids=["straggler", "throttle"],
)
def test_engine_over_prometheus_finds_the_cause(tmp_path, make, cause, node):
    promtool = need_binary("promtool", "prometheus")
    sc = make(0)
    # Recent timestamps: Prometheus drops blocks older than its retention (15 days).
    shift = time.time() - 120 - scenarios.T0 - scenarios.DURATION
    for lst in sc.series.values():
        for s in lst:
            s.points = [(t + shift, v) for t, v in s.points]
    om = tmp_path / "data.om"
    om.write_text("".join(lines(_families(sc))))
    backfill(om, tmp_path / "tsdb", promtool)
    end = max(t for s in sc.series["tokens_per_sec"] for t, _ in s.points)
    start = min(t for s in sc.series["tokens_per_sec"] for t, _ in s.points)
    # The throughput rule reads the shipped recording rules' series, as on a real
    # Prometheus that loads alerts/sentinel.rules.yml.
    backfill_rules(tmp_path / "tsdb", start, end, 5.0, promtool=promtool,
                   prometheus=need_binary("prometheus", "prometheus"))
    rules = [r for r in load_rules() if r.name in ("throughput", "gpu-throttle", "diagnosis")]
    with run_prometheus(tmp_path / "prom", tsdb_path=tmp_path / "tsdb") as prom:
        src = PrometheusSource(prom.url)
        detector = OnlineDetector(rules, src)
        out = detector.cycle(now=end)
        assert detector.errors == {} and detector.inactive() == {}
        diag = [f for f in out if f.kind == "diagnosis"]
        assert diag, [f.summary for f in out]
        assert {d.evidence["cause"] for d in diag} == {cause}, [d.summary for d in diag]
        assert {d.node for d in diag} == {node}
        # The per-node query returns the slow node (and at most a jittery neighbour or
        # two that touched 90% of the median once), not the fleet.
        tps = src.range(rules[0].series["tokens_per_sec"], end - 600, end, 5)
        names = [s.labels["hostname"] for s in tps]
        if cause == "straggler":
            assert "node05" in names and len(names) <= 3, names
        # A second cycle reports nothing new: the findings are deduplicated.
        assert detector.cycle(now=end) == []


def test_first_xid_of_a_gpu_is_found_through_prometheus(tmp_path):
    """A GPU's first XID creates its counter at 1: increase() alone never sees it."""
    import json

    from sentinel.gpu.nvml_replay import H100_LOAD
    from tests.support.agent import run_agent

    dump = json.loads(H100_LOAD.read_text())
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps(dump))
    rules = [r for r in load_rules() if r.name == "gpu-errors"]
    env = {"SENTINEL_AGENT_HOSTNAME": "node3"}
    with run_agent(tmp_path / "agent", ["--gpu-replay", str(replay)], env=env) as agent, \
            run_prometheus(tmp_path / "prom", [agent.hostport]) as prom:
        prom.wait_for('sentinel_gpu_up{hostname="node3"}')
        detector = OnlineDetector(rules, PrometheusSource(prom.url))
        assert detector.cycle() == []
        dump["xid_events"] = [{"uuid": dump["devices"][0]["uuid"], "xid": 79}]
        (tmp_path / "replay.tmp").write_text(json.dumps(dump))
        (tmp_path / "replay.tmp").replace(replay)  # the XID happens now
        prom.wait_for('sentinel_gpu_xid_errors_total{hostname="node3",xid="79"}')
        # increase() over the window is 0: the counter's only samples are 1.
        assert prom.query('increase(sentinel_gpu_xid_errors_total[10m]) > 0') == []
        deadline = time.monotonic() + 10
        found = []
        while not found and time.monotonic() < deadline:
            found = [f for f in detector.cycle() if f.kind == "gpu_xid"]
            time.sleep(0.5)
        assert detector.errors == {}
        [f] = found
        assert (f.node, f.gpu, f.suggested_action) == ("node3", "0", "spare_swap")
        assert f.summary == "XID 79 (hardware) on node3 GPU 0: 1 new"


def test_disk_latency_finding_names_the_node_not_the_scrape_address(tmp_path):
    """The default disk rule joins the agent's hostname: findings say node7, as Slurm does."""
    import dataclasses
    import threading

    from tests.support.agent import run_agent

    proc = tmp_path / "proc"
    proc.mkdir()
    reads, read_ms = [1000], [100]  # 0.1 ms a read, then 50 ms
    slow = threading.Event()
    stop = threading.Event()

    def write() -> None:
        line = "259       0 nvme0n1 {r} 0 {s} {ms} 10 0 80 5 0 7 12 0 0 0 0 0 0\n"
        while not stop.is_set():
            reads[0] += 100
            read_ms[0] += 5000 if slow.is_set() else 10
            tmp = proc / "diskstats.tmp"
            tmp.write_text(line.format(r=reads[0], s=reads[0] * 8, ms=read_ms[0]))
            tmp.replace(proc / "diskstats")
            stop.wait(0.25)

    write_thread = threading.Thread(target=write, daemon=True)
    write_thread.start()
    [rule] = [dataclasses.replace(r, window_s=120.0, step_s=1.0) for r in load_rules()
              if r.name == "disk-latency"]
    rule.params.sustain_s, rule.params.baseline_s = 3.0, 10.0
    args = ["--procfs", str(proc), "--no-collector.host", "--no-collector.gpu"]
    try:
        with run_agent(tmp_path / "agent", args, env={"SENTINEL_AGENT_HOSTNAME": "node7"}) \
                as agent, run_prometheus(tmp_path / "prom", [agent.hostport]) as prom:
            prom.wait_for('sentinel_disk_read_latency_seconds{device="nvme0n1"}')
            time.sleep(15)  # the baseline: 0.1 ms a read
            slow.set()
            detector = OnlineDetector([rule], PrometheusSource(prom.url))
            deadline = time.monotonic() + 20
            found = []
            while not found and time.monotonic() < deadline:
                found = [f for f in detector.cycle() if f.kind == "disk_latency"]
                time.sleep(1.0)
    finally:
        stop.set()
        write_thread.join(5)
    assert detector.errors == {}
    [f] = found
    assert (f.node, f.evidence["device"]) == ("node7", "nvme0n1")
    assert f.summary.startswith("read latency on node7 nvme0n1 at 50 ms")


def test_long_drop_through_prometheus_keeps_one_finding(tmp_path):
    """A 30-minute job-wide drop (three windows long), read every 30 s from a real
    Prometheus through the shipped rules: one throughput finding and one diagnosis, each
    with one key from firing to resolved (not a new key per cycle)."""
    import numpy as np

    promtool = need_binary("promtool", "prometheus")
    rng = np.random.default_rng(1)
    end = time.time() - 120
    start = end - 60 * 60.0
    ts = np.arange(start, end, 5.0)
    drop0, drop1 = start + 20 * 60.0, start + 50 * 60.0
    level = np.where((ts >= drop0) & (ts < drop1), 0.6, 1.0)
    tps = [({"job": "gpt", "rank": "0", "hostname": f"node{i:02d}"},
            list(zip(ts.tolist(), (50_000.0 * level * (1 + rng.normal(0, 0.03, len(ts)))
                                   ).tolist(), strict=True)))
           for i in range(4)]
    om = tmp_path / "data.om"
    om.write_text("".join(lines([("sentinel_train_tokens_per_second", "gauge", tps)])))
    backfill(om, tmp_path / "tsdb", promtool)
    backfill_rules(tmp_path / "tsdb", start, end, 5.0, promtool=promtool,
                   prometheus=need_binary("prometheus", "prometheus"))
    rules = [r for r in load_rules() if r.name in ("throughput", "diagnosis")]
    with run_prometheus(tmp_path / "prom", tsdb_path=tmp_path / "tsdb") as prom:
        detector = OnlineDetector(rules, PrometheusSource(prom.url), fetch_threads=1)
        changes = []
        now = drop0 - 60.0
        while now <= end:
            changes += detector.cycle(now=now)
            now += 30.0
        assert detector.errors == {}
    for kind in ("throughput_drop", "diagnosis"):
        got = [(f.key, f.state) for f in changes if f.kind == kind]
        assert [s for _, s in got] == ["firing", "resolved"], got
        assert got[0][0] == got[1][0]
    fired = next(f for f in changes if f.kind == "throughput_drop")
    assert abs(fired.time_start - drop0) <= 30.0
    assert fired.detected_at is not None and fired.detected_at - drop0 <= 90.0
    gone = [f for f in changes if f.kind == "throughput_drop" and f.state == "resolved"][0]
    assert gone.time_end is not None and abs(gone.time_end - drop1) <= 90.0
