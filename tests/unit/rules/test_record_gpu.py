"""The GPU corpus recorder, run for real on the CPU at toy size, and the benchmark's split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.detectors.corpus import GPU_DIR, load_real
from bench.detectors.merge_gpu import main as merge_main
from bench.detectors.merge_gpu import merge
from bench.detectors.record_gpu import plan, select, split
from sentinel.rules.jsonl import iter_records
from sentinel.rules.window import NodePoint, StepPoint


def test_split_alternates_within_a_family_and_holds_out_singletons():
    got = split({"healthy": ["h-b", "h-a", "h-c"], "early_spike": ["e"]})
    assert got == {"tune": ["h-a", "h-c"], "held_out": ["e", "h-b"]}


def test_split_keeps_every_existing_part_and_balances_the_new_runs():
    keep = {"h-a": "tune", "h-b": "held_out", "ss-s0": "held_out", "ck-s0": "held_out"}
    got = split({"healthy": ["h-a", "h-b", "h-c"], "storage": ["ss-s0", "ss-s1"],
                 "checkpoint": ["ck-s0"], "bound": ["bc-s1", "bc-s0"]}, keep)
    # Kept parts stay; a second run of a held-out singleton is tuned on; a new family
    # alternates; the third healthy run breaks a tie towards tune.
    assert got == {"tune": ["bc-s0", "h-a", "h-c", "ss-s1"],
                   "held_out": ["bc-s1", "ck-s0", "h-b", "ss-s0"]}
    # Two kept tune runs: the new one goes to the part its family lacks.
    assert split({"f": ["a", "b", "c"]}, {"a": "tune", "b": "tune"}) == {
        "tune": ["a", "b"], "held_out": ["c"]}


def test_only_takes_names_families_and_round2_and_refuses_the_rest():
    runs = plan(smoke=True)
    assert [r.name for r in select(runs, "subtle_small,checkpoint-s1")] == [
        "subtle_small-s0", "subtle_small-s1", "checkpoint-s1"]
    new = [r.name for r in select(runs, "round2")]
    assert new == ["subtle_small-s0", "subtle_small-s1", "bound_contention-s0",
                   "bound_contention-s1", "storage_stall-s1", "growing_slowdown-s1",
                   "checkpoint-s1"]
    assert select(runs, "") == runs
    with pytest.raises(ValueError, match=r"unknown nope .*valid: round2, .*bound_contention"):
        select(runs, "subtle_small,nope")


def test_the_recorder_writes_labelled_split_traces_the_tools_read(tmp_path):
    """Two runs at toy size on the CPU: calibrated subtle bad batches and a GPU-bound
    contention window (12 s: the competitor's start-up must fit before its window)."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.detectors.record_gpu", "--device", "cpu", "--smoke",
         "--only", "subtle_small-s1,bound_contention-s0", "--throughput-s", "12",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    traces = tmp_path / "traces"
    parts = json.loads((tmp_path / "split.json").read_text())
    assert sorted(parts["held_out"]) == ["bound_contention-s0", "subtle_small-s1"]
    assert parts["tune"] == [] and parts["skipped"] == []
    subtle = json.loads((traces / "subtle_small-s1.labels.json").read_text())
    assert subtle["split"] == "held_out" and subtle["family"] == "gpu_subtle_small"
    assert [e["start"] for e in subtle["events"]] == [7, 12, 16, 21, 25]
    unknown: dict[str, str] = {}
    pts = [p for _w, p in iter_records(traces / "subtle_small-s1.jsonl", unknown)]
    steps = [p for p in pts if isinstance(p, StepPoint)]
    assert unknown == {} and [p.step for p in steps] == list(range(30))
    assert all(p.run == "subtle_small-s1" and p.grad_norm and p.tokens for p in steps)
    # Each step's wait for its batch, timed around the dataloader.
    assert all(p.data_s is not None and 0 <= p.data_s < 5 for p in steps)
    # Each bad batch says what was done and what the step's loss really did: the ratio
    # over the 16 steps before, from the trace itself.
    loss = {p.step: p.loss for p in steps}
    for ev in subtle["events"]:
        s = ev["start"]
        before = [loss[i] for i in range(max(0, s - 16), s)]
        assert ev["loss_ratio"] == pytest.approx(loss[s] / (sum(before) / len(before)),
                                                 rel=1e-3)
        assert 0.0 <= ev["fraction"] <= 1.0 and 1.2 <= ev["target_ratio"] <= 1.4
        assert ev["grad_norm_ratio"] > 0 and 1 <= ev["probes"] <= 12
    # Where random bytes can raise the loss that much (the toy model's later steps), the
    # calibration lands in the band.
    assert any(1.2 <= ev["loss_ratio"] <= 1.4 and ev["fraction"] < 1.0
               for ev in subtle["events"])
    busy = json.loads((traces / "bound_contention-s0.labels.json").read_text())
    (ev,) = busy["time_events"]
    assert ev["cause"] == "gpu_contention" and ev["end_time"] > ev["start_time"]
    assert "drop" in ev and busy["family"] == "gpu_bound_contention"
    assert busy["batch_size"] == 8 * 8  # the GPU-bound job: 8x the batch
    # The node records are in the trace itself, in time order, in the format of the
    # agent's /api/v1/node (here on the CPU: no GPU fields, the disk sampler's seconds).
    recs = [p for _w, p in iter_records(traces / "bound_contention-s0.jsonl", unknown)]
    nodes = [p for p in recs if isinstance(p, NodePoint)]
    assert unknown == {} and len(nodes) >= 3
    assert all(n.run == "bound_contention-s0" and n.node for n in nodes)
    assert any(n.disk_in_flight is not None for n in nodes)
    assert {p.tokens for p in recs if isinstance(p, StepPoint)} == {64 * 64}
    times = [p.time for p in recs]
    assert times == sorted(times)
    assert not list(traces.glob("*.node.jsonl"))
    # The benchmark reads each part, and only it.
    assert {c.name for c in load_real(traces, "held_out")} == {"subtle_small-s1",
                                                               "bound_contention-s0"}
    assert load_real(traces, "tune") == []


def test_a_curve_without_a_split_is_refused_when_a_split_is_asked(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"step": 0, "loss": 2.0}\n')
    (tmp_path / "c.labels.json").write_text('{"healthy": true, "events": []}')
    with pytest.raises(ValueError, match="no split"):
        load_real(tmp_path, "held_out")


def _corpus(d, runs: dict[str, tuple[str, str | None]]):
    """Write a corpus of one-step traces: name -> (family, split)."""
    d.mkdir(parents=True)
    for name, (family, part) in runs.items():
        (d / f"{name}.jsonl").write_text(f'{{"run": "{name}", "step": 0, "loss": 2.0}}\n')
        lab = {"healthy": True, "family": family, "events": [], "time_events": []}
        if part:
            lab["split"] = part
        (d / f"{name}.labels.json").write_text(json.dumps(lab))
    return d


def test_merge_adds_new_runs_by_the_rule_and_moves_no_existing_one(tmp_path):
    old = {"healthy-s0": ("gpu_healthy", "tune"), "healthy-s1": ("gpu_healthy", "held_out"),
           "storage_stall-s0": ("gpu_storage_stall", "held_out")}
    dest = _corpus(tmp_path / "h200", old)
    (dest / "storage_stall-s0.node.jsonl").write_text("")  # an old recording's rows
    (dest / "split.json").write_text(json.dumps(
        {"tune": ["healthy-s0"], "held_out": ["healthy-s1", "storage_stall-s0"],
         "skipped": ["x"]}))
    out = tmp_path / "out"
    _corpus(out / "traces", {"storage_stall-s1": ("gpu_storage_stall", "held_out"),
                             "bound_contention-s0": ("gpu_bound_contention", "tune"),
                             "bound_contention-s1": ("gpu_bound_contention", "held_out")})
    assert merge_main([str(out), str(dest)]) == 0
    parts = json.loads((dest / "split.json").read_text())
    assert parts == {"tune": ["bound_contention-s0", "healthy-s0", "storage_stall-s1"],
                     "held_out": ["bound_contention-s1", "healthy-s1", "storage_stall-s0"],
                     "skipped": ["x"]}
    # Each trace's labels say the same; the traces were copied; the old ones untouched.
    assert {c.name for c in load_real(dest, "tune")} == set(parts["tune"])
    assert {c.name for c in load_real(dest, "held_out")} == set(parts["held_out"])
    assert (dest / "storage_stall-s1.jsonl").read_text() == (
        out / "traces" / "storage_stall-s1.jsonl").read_text()
    # Merging the same runs again is refused, and writes nothing.
    before = {p.name: p.read_text() for p in dest.iterdir()}
    with pytest.raises(ValueError, match="already has bound_contention-s0, .*nothing merged"):
        merge(out, dest)
    assert {p.name: p.read_text() for p in dest.iterdir()} == before


def test_merge_refuses_a_corpus_whose_labels_and_split_disagree(tmp_path):
    dest = _corpus(tmp_path / "h200", {"a": ("gpu_healthy", "tune")})
    (dest / "split.json").write_text(json.dumps({"tune": [], "held_out": ["a"]}))
    src = _corpus(tmp_path / "new", {"b": ("gpu_healthy", None)})
    with pytest.raises(ValueError, match=r"a is 'held_out' in split.json but 'tune'"):
        merge(src, dest)
    (dest / "split.json").unlink()
    with pytest.raises(ValueError, match="no split.json"):
        merge(src, dest)
    with pytest.raises(SystemExit):
        merge_main([str(tmp_path / "empty"), str(dest)])


def test_the_committed_corpus_has_a_tune_and_a_held_out_run_of_each_cause():
    """The H200 corpus as committed: split.json and the labels agree, each throughput
    cause (and the checkpoint saves) and each loss family of two runs or more has a run
    in each part, and the first round's held-out runs are still held out."""
    parts = json.loads((GPU_DIR / "split.json").read_text())
    labels = {p.name.removesuffix(".labels.json"): json.loads(p.read_text())
              for p in GPU_DIR.glob("*.labels.json")}
    assert {n for n, lab in labels.items() if lab["split"] == "tune"} == set(parts["tune"])
    assert {n for n, lab in labels.items() if lab["split"] == "held_out"} == set(
        parts["held_out"])
    by_cause: dict[str, set[str]] = {}
    for lab in labels.values():
        causes = [e["cause"] for e in lab["time_events"]] or (
            ["checkpoint"] if lab["family"] == "gpu_checkpoint" else [])
        for c in causes:
            by_cause.setdefault(c, set()).add(lab["split"])
    assert by_cause == {c: {"tune", "held_out"} for c in
                        ("gpu_contention", "storage_stall", "growing_slowdown", "checkpoint")}
    by_family: dict[str, list[str]] = {}
    for lab in labels.values():
        by_family.setdefault(lab["family"], []).append(lab["split"])
    assert all(set(s) == {"tune", "held_out"} for s in by_family.values() if len(s) > 1)
    first_round_held_out = {"checkpoint-s0", "early-s0", "gpu_contention-s0",
                            "growing_slowdown-s0", "healthy-s0-lr2.0", "healthy-s1-lr2.0",
                            "healthy-s2-lr2.0", "high_lr-s1", "sharp-s1", "storage_stall-s0",
                            "subtle-s1"}
    assert first_round_held_out <= set(parts["held_out"])
    # The GPU-bound contention runs really slowed the job by the 30% or more.
    for name in ("bound_contention-s0", "bound_contention-s1"):
        (ev,) = labels[name]["time_events"]
        assert ev["drop"] >= 0.30, (name, ev)
