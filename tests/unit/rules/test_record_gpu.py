"""The GPU corpus recorder, run for real on the CPU at toy size, and the benchmark's split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.detectors.corpus import load_real
from bench.detectors.record_gpu import split
from sentinel.rules.jsonl import iter_records
from sentinel.rules.window import NodePoint, StepPoint


def test_split_alternates_within_a_family_and_holds_out_singletons():
    got = split({"healthy": ["h-b", "h-a", "h-c"], "early_spike": ["e"]})
    assert got == {"tune": ["h-a", "h-c"], "held_out": ["e", "h-b"]}


def test_the_recorder_writes_labelled_split_traces_the_tools_read(tmp_path):
    """Two runs at toy size on the CPU: a subtle bad batch and a GPU-contention window
    (12 s: the competitor's Python and torch start-up must fit before its window)."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.detectors.record_gpu", "--device", "cpu", "--smoke",
         "--only", "subtle-s0,gpu_contention-s0", "--throughput-s", "12",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    traces = tmp_path / "traces"
    parts = json.loads((tmp_path / "split.json").read_text())
    assert sorted(parts["held_out"]) == ["gpu_contention-s0", "subtle-s0"]
    assert parts["tune"] == [] and parts["skipped"] == []
    subtle = json.loads((traces / "subtle-s0.labels.json").read_text())
    assert subtle["split"] == "held_out" and subtle["family"] == "gpu_subtle_spike"
    assert [e["start"] for e in subtle["events"]] == [12, 18, 24]
    unknown: dict[str, str] = {}
    pts = [p for _w, p in iter_records(traces / "subtle-s0.jsonl", unknown)]
    steps = [p for p in pts if isinstance(p, StepPoint)]
    assert unknown == {} and [p.step for p in steps] == list(range(30))
    assert all(p.run == "subtle-s0" and p.grad_norm and p.tokens for p in steps)
    # Each step's wait for its batch, timed around the dataloader.
    assert all(p.data_s is not None and 0 <= p.data_s < 5 for p in steps)
    busy = json.loads((traces / "gpu_contention-s0.labels.json").read_text())
    (ev,) = busy["time_events"]
    assert ev["cause"] == "gpu_contention" and ev["end_time"] > ev["start_time"]
    # The node records are in the trace itself, in time order, in the format of the
    # agent's /api/v1/node (here on the CPU: no GPU fields, the disk sampler's seconds).
    recs = [p for _w, p in iter_records(traces / "gpu_contention-s0.jsonl", unknown)]
    nodes = [p for p in recs if isinstance(p, NodePoint)]
    assert unknown == {} and len(nodes) >= 3
    assert all(n.run == "gpu_contention-s0" and n.node for n in nodes)
    assert any(n.disk_in_flight is not None for n in nodes)
    times = [p.time for p in recs]
    assert times == sorted(times)
    assert not list(traces.glob("*.node.jsonl"))
    # The benchmark reads each part, and only it.
    assert {c.name for c in load_real(traces, "held_out")} == {"subtle-s0",
                                                               "gpu_contention-s0"}
    assert load_real(traces, "tune") == []


def test_a_curve_without_a_split_is_refused_when_a_split_is_asked(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"step": 0, "loss": 2.0}\n')
    (tmp_path / "c.labels.json").write_text('{"healthy": true, "events": []}')
    with pytest.raises(ValueError, match="no split"):
        load_real(tmp_path, "held_out")
