"""What the nodes saw names a step-stream drop's cause in its first finding.

Traces of 4 nodes, one rank each, 0.25 s steps that report their input wait, and one
node record per node per second (disk latency, in-flight I/Os, GPU processes and ranks,
throttle reasons), as the agent's /api/v1/node sends them. Each cause changes what it
changes for real: a storage stall makes the steps wait for their input while the disk
slows, a competing process adds a GPU process and slows the step's compute, and so on.
The shipped rules run on them through the window path (online) and through
``sentinel detect FILE`` (offline): the same cause, named in the drop's first finding.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sentinel.rules.engine import run_rule
from sentinel.rules.rulefile import load_rules
from sentinel.rules.window import NodePoint, StepPoint, Window

T0 = 1_764_400_000.0
ONSET = T0 + 150.0
END = T0 + 210.0
STEP_S = 0.25
WAIT_S = 0.01  # a healthy step's input wait
NODES = ("n0", "n1", "n2", "n3")


@dataclass
class Cause:
    """What a cause changes from ONSET to END (``nodes``: on which nodes)."""

    slow: float = 1.0  # step time multiplied by this (all nodes: a synchronous job)
    wait: float = 0.0  # seconds of input wait added per step on ``nodes``
    grow: bool = False  # the added wait grows from 0 to 2x ``wait`` through the window
    latency: float | None = None  # disk read latency on ``nodes`` (healthy: 0.2 ms)
    extra_gpu: str | None = None  # a GPU of ``nodes`` that gets a second process
    reasons: tuple[str, ...] = ()  # clock-event reasons on GPU "1" of ``nodes``
    nodes: tuple[str, ...] = ("n2",)
    straggler: bool = False  # only ``nodes`` slow down (not synchronous)
    node_records: bool = True
    data_s: bool = True
    saves: tuple[float, ...] = field(default=())  # one 12 s step at each time
    early: float = 0.0  # seconds before ONSET the extra process appears (loading)
    ranks: bool = True  # node records say the ranks on each GPU


def trace(c: Cause, seed: int = 0, duration: float = 300.0
          ) -> tuple[list[StepPoint], list[NodePoint]]:
    """Return the steps and node records of a 4-node run with cause ``c``."""
    rng = random.Random(seed)
    steps: list[StepPoint] = []
    t, step = T0, 0
    clock = dict.fromkeys(NODES, T0)  # a straggler's steps run on its own, slower clock
    saves = list(c.saves)
    while t < T0 + duration:
        on = ONSET <= t < END
        frac = (t - ONSET) / (END - ONSET) if on else 0.0
        add = (c.wait * 2 * frac if c.grow else c.wait) if on else 0.0
        dt = STEP_S * (c.slow if on and not c.straggler else 1.0) + add
        if saves and t >= saves[0]:
            dt = 12.0
            saves.pop(0)
        dt *= 1 + rng.uniform(-0.05, 0.05)
        t += dt
        step += 1
        for i, n in enumerate(NODES):
            lag = c.straggler and on and n in c.nodes
            clock[n] = t if not c.straggler else clock[n] + dt * (c.slow if lag else 1.0)
            wait = WAIT_S * (1 + rng.uniform(-0.2, 0.2)) + (add if n in c.nodes else 0.0)
            steps.append(StepPoint(step=step, loss=2.0, time=clock[n] + 0.002 * i, node=n,
                                   rank=i, tokens=8192.0, data_s=wait if c.data_s else None,
                                   loss_given=False))
    recs: list[NodePoint] = []
    if c.node_records:
        for s in range(int(duration)):
            now = T0 + s + 0.5
            on = ONSET <= now < END
            for n in NODES:
                hit = on and n in c.nodes
                lat = c.latency if hit and c.latency else 0.0002 * (1 + rng.uniform(-0.3, 0.3))
                procs = {g: 1 for g in ("0", "1")}
                if c.extra_gpu and n in c.nodes and ONSET - c.early <= now < END:
                    procs[c.extra_gpu] = 2
                recs.append(NodePoint(
                    time=now, node=n, disk_read_latency_s=lat,
                    disk_in_flight=24 if hit and c.latency else 1, gpu_processes=procs,
                    gpu_ranks={"0": 1, "1": 1} if c.ranks else {},
                    throttle_reasons={"1": c.reasons} if hit and c.reasons else {}))
    return sorted(steps, key=lambda p: p.time or 0.0), recs


CASES = {
    "storage_stall": Cause(slow=1.0, wait=0.2, latency=0.015, nodes=NODES),
    "input_pipeline": Cause(wait=0.2, nodes=NODES),
    "gpu_contention": Cause(slow=1.7, extra_gpu="0"),
    "throttling_gpu": Cause(slow=1.6, reasons=("hw_thermal_slowdown", "sw_power_cap")),
    "job_wide_slowdown": Cause(slow=1.7),
    "straggler": Cause(slow=1.6, straggler=True),
}


def findings(steps: list[StepPoint], recs: list[NodePoint]):
    rules = [r for r in load_rules() if r.name in ("throughput-steps", "diagnosis")]
    steps_rule, diag_rule = rules
    found = run_rule(steps_rule, Window(job="j", steps=steps, nodes=recs))
    return found, run_rule(diag_rule, Window(job="j", findings=found))


@pytest.mark.parametrize("cause", sorted(CASES))
def test_the_first_finding_names_the_cause_from_what_the_nodes_saw(cause):
    for seed in range(2):
        drops, diags = findings(*trace(CASES[cause], seed))
        scope = "node" if cause == "straggler" else "job"
        drops = [d for d in drops if d.evidence["scope"] == scope]
        assert len(drops) == 1, [d.summary for d in drops]
        (drop,) = drops
        assert drop.evidence["flagged_at"] - ONSET <= 10.0, drop.evidence
        got = [d for d in diags if d.evidence["drop"] == drop.key]
        assert [d.evidence["cause"] for d in got] == [cause], [d.summary for d in got]
        # Named from the drop's own evidence: as early as the drop itself.
        assert got[0].detected_at == drop.detected_at
        if cause == "gpu_contention":
            assert (got[0].node, got[0].gpu) == ("n2", "0")
        if cause == "throttling_gpu":
            assert (got[0].node, got[0].gpu) == ("n2", "1")
            assert "hw_thermal_slowdown" in got[0].summary
            assert "sw_power_cap" not in got[0].summary  # power cap is not a bad reason
        if cause in ("input_pipeline", "job_wide_slowdown"):
            assert got[0].evidence["worsening"] is False


def test_a_growing_input_wait_is_worsening_in_the_first_finding():
    for seed in range(3):
        drops, diags = findings(*trace(Cause(wait=0.35, grow=True, nodes=NODES), seed))
        (drop,) = [d for d in drops if d.evidence["scope"] == "job"]
        (diag,) = diags
        assert diag.evidence["cause"] == "input_pipeline"
        assert diag.evidence["worsening"] is True, drop.evidence["signals"]
        assert diag.evidence["classification"] == "worsening"
        assert diag.detected_at == drop.detected_at


def test_a_process_beyond_the_ranks_is_contention_however_long_it_loaded_first():
    """Seen 60 s before it slows the job (it loaded its data first): with the ranks on
    the GPU known it is still another program's; without them only a rise counts."""
    early = Cause(slow=1.7, extra_gpu="0", early=60.0)
    _, diags = findings(*trace(early))
    assert [(d.evidence["cause"], d.node, d.gpu) for d in diags] == [
        ("gpu_contention", "n2", "0")]
    _, diags = findings(*trace(Cause(slow=1.7, extra_gpu="0", early=60.0, ranks=False)))
    assert [d.evidence["cause"] for d in diags] == ["job_wide_slowdown"]
    _, diags = findings(*trace(Cause(slow=1.7, extra_gpu="0", ranks=False)))
    assert [d.evidence["cause"] for d in diags] == ["gpu_contention"]


def test_without_node_records_or_input_waits_the_drop_is_job_wide_as_before():
    c = Cause(wait=0.2, latency=0.015, nodes=NODES, node_records=False, data_s=False)
    drops, diags = findings(*trace(c))
    assert [d.evidence["cause"] for d in diags] == ["job_wide_slowdown"]
    assert "signals" not in drops[0].evidence


def test_node_signals_flat_through_jitter_and_checkpoint_saves_give_no_finding():
    saves = tuple(T0 + 60.0 + 70.0 * i for i in range(3))
    for seed in range(3):
        drops, _ = findings(*trace(Cause(saves=saves), seed))
        assert drops == [], [d.summary for d in drops]


def write_file(path: Path, steps: list[StepPoint], recs: list[NodePoint]) -> Path:
    lines = []
    for p in steps:
        lines.append((p.time, {"run": "r", "step": p.step, "node": p.node, "rank": p.rank,
                               "time": p.time, "tokens": p.tokens, "data_s": p.data_s}))
    for r in recs:
        lines.append((r.time, {"run": "r", "node": r.node, "time": r.time,
                               "disk_read_latency_s": r.disk_read_latency_s,
                               "disk_in_flight": r.disk_in_flight,
                               "gpu_processes": r.gpu_processes, "gpu_ranks": r.gpu_ranks,
                               "throttle_reasons": {g: list(v) for g, v in
                                                    r.throttle_reasons.items()}}))
    path.write_text("".join(json.dumps(obj) + "\n" for _t, obj in sorted(
        lines, key=lambda x: x[0])))
    return path


@pytest.mark.parametrize("cause", ["storage_stall", "gpu_contention", "throttling_gpu"])
def test_sentinel_detect_file_diagnoses_a_trace_with_node_lines_like_a_live_run(
        tmp_path, cause):
    path = write_file(tmp_path / "t.jsonl", *trace(CASES[cause]))
    r = subprocess.run([sys.executable, "-m", "sentinel", "detect", str(path), "--strict"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "unknown key" not in r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    diags = [f for f in out if f["kind"] == "diagnosis"]
    assert [d["evidence"]["cause"] for d in diags] == [cause]
    (drop,) = [f for f in out if f["kind"] == "throughput_drop"]
    assert diags[0]["detected_at"] == drop["detected_at"]
    assert drop["detected_at"] - ONSET <= 10.0


def test_the_prometheus_form_of_the_same_drop_names_the_same_cause():
    """The `throughput` rule's drop (Prometheus series: no node records) and the step
    rule's drop of the same moment are one drop: the first takes the second's signals."""
    from sentinel.rules.detectors import diagnosis
    from sentinel.rules.finding import Finding

    steps_drop, _ = findings(*trace(CASES["gpu_contention"]))
    (sd,) = steps_drop
    series_drop = Finding(kind="throughput_drop", severity="warning", summary="series",
                          suggested_action="notify", detector="throughput_drop", job="j",
                          time_start=ONSET + 5.0, time_end=ONSET + 40.0,
                          evidence={"scope": "job"}, episode=f"{ONSET + 5.0:.0f}",
                          rule="throughput")
    got = diagnosis.detect(Window(findings=[sd, series_drop]), diagnosis.Params())
    assert [(d.evidence["drop"], d.evidence["cause"], d.gpu) for d in got] == [
        (sd.key, "gpu_contention", "0"), (series_drop.key, "gpu_contention", "0")]
    assert got[1].evidence["node_signals"] == sd.key
    alone = diagnosis.detect(Window(findings=[series_drop]), diagnosis.Params())
    assert [d.evidence["cause"] for d in alone] == ["job_wide_slowdown"]


def test_the_detectors_cause_of_the_signals_is_the_diagnosis_cause():
    # The throughput detector sees a cause change through cause_of (test_rejudge.py);
    # it must name what the diagnosis names from the same evidence.
    from sentinel.rules.detectors._signals import cause_of

    for name, case in sorted(CASES.items()):
        drops, diags = findings(*trace(case, 0))
        for d in diags:
            (drop,) = [x for x in drops if x.key == d.evidence["drop"]]
            want = cause_of(drop.evidence.get("signals"))
            if want is None:
                assert d.evidence["cause"] in ("job_wide_slowdown", "straggler"), name
            else:
                assert d.evidence["cause"] == want, name
