"""The throughput part of the benchmark replays a recorded corpus through sentinel detect.

A small corpus in record_gpu.py's layout (``<name>.jsonl`` with step and node records,
``<name>.labels.json`` with ``time_events`` and ``split``), one trace in the layout of
recordings made before node records (a separate ``<name>.node.jsonl``), scored per
cause and per family by bench/detectors/throughput.py and bench/detectors/run.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.detectors.run import main as run_main
from bench.detectors.throughput import corpus_table, replay_corpus

T0 = 1_795_000_000.0
A, B = T0 + 25.0, T0 + 40.0  # the cause's window
STEP_S = 0.1


def _write(d: Path, name: str, family: str, split: str, lines: list[dict],
           events: list[dict]) -> None:
    lines.sort(key=lambda x: x["time"])
    (d / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / f"{name}.labels.json").write_text(json.dumps(
        {"healthy": not events, "family": family, "events": [], "time_events": events,
         "split": split}))


def _run(name: str, cause: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Return the step records and node records of a 60 s one-GPU run with ``cause``."""
    rng = random.Random(seed)
    steps, t, i = [], T0, 0
    while t < T0 + 60.0:
        on = A <= t < B
        frac = (t - A) / (B - A) if on else 0.0
        wait = 0.002 + (0.08 if on and cause == "storage_stall" else 0.0) + (
            0.15 * frac if cause == "growing_slowdown" else 0.0)
        dt = STEP_S * (1.7 if on and cause == "gpu_contention" else 1.0) + wait - 0.002
        if cause == "checkpoint" and i == 300:
            dt = 3.0  # one full save: one slow step
        t += dt * (1 + rng.uniform(-0.03, 0.03))
        steps.append({"run": name, "step": i, "rank": 0, "node": "g0", "time": t,
                      "loss": 2.0, "grad_norm": 1.0, "tokens": 8192, "data_s": wait})
        i += 1
    nodes = []
    for s in range(60):
        now = T0 + s + 0.5
        on = A <= now < B
        storage = on and cause == "storage_stall"
        nodes.append({"run": name, "node": "g0", "time": now,
                      "disk_read_latency_s": 0.02 if storage else 0.0002,
                      "disk_in_flight": 30 if storage else 1,
                      "gpu_processes": {"0": 2 if on and cause == "gpu_contention" else 1},
                      "gpu_ranks": {"0": 1}})
    return steps, nodes


def corpus(d: Path) -> Path:
    d.mkdir()
    window = [{"start_time": A, "end_time": B}]
    for cause in ("storage_stall", "gpu_contention"):
        steps, nodes = _run(f"{cause}-s0", cause, 1)
        _write(d, f"{cause}-s0", f"gpu_{cause}", "held_out", steps + nodes,
               [{**window[0], "cause": cause, "worsening": False}])
    steps, nodes = _run("checkpoint-s0", "checkpoint", 2)
    _write(d, "checkpoint-s0", "gpu_checkpoint", "held_out", steps + nodes, [])
    steps, nodes = _run("healthy-s0", "", 3)
    _write(d, "healthy-s0", "gpu_healthy", "tune", steps + nodes, [])
    # Recorded before node records: no data_s on the steps, a node row file beside.
    steps, _ = _run("growing_slowdown-s0", "growing_slowdown", 4)
    rows = []
    for s in range(60):
        end = T0 + s + 1.0
        waits = [x["data_s"] for x in steps if end - 1.0 < x["time"] <= end]
        rows.append({"time": end, "disk_read_latency_max_s": 0.0, "disk_in_flight_max": 0,
                     "gpu_compute_processes": 1,
                     "data_s_mean": sum(waits) / len(waits) if waits else None})
    for x in steps:
        del x["data_s"]
    _write(d, "growing_slowdown-s0", "gpu_growing_slowdown", "held_out", steps,
           [{**window[0], "cause": "growing_slowdown", "worsening": True}])
    (d / "growing_slowdown-s0.node.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_each_cause_is_found_and_named_and_the_healthy_traces_raise_nothing(tmp_path):
    d = corpus(tmp_path / "traces")
    results = {r["trace"]: r for r in replay_corpus(d, "held_out")}
    assert sorted(results) == ["checkpoint-s0", "gpu_contention-s0", "growing_slowdown-s0",
                               "storage_stall-s0"]  # the tune part left out
    for name, named in (("storage_stall-s0", "storage_stall"),
                        ("gpu_contention-s0", "gpu_contention"),
                        ("growing_slowdown-s0", "input_pipeline")):
        (ev,) = results[name]["events"]
        assert ev["detected"] and ev["named"] == named and ev["right"], ev
        assert 0 < ev["delay_s"] <= 10.0 and ev["named_delay_s"] == ev["delay_s"]
        assert results[name]["false_alarms"] == []
    assert results["growing_slowdown-s0"]["events"][0]["worsening"] is True
    assert results["checkpoint-s0"]["false_alarms"] == []
    table = corpus_table(list(results.values()))
    assert "| storage_stall | 1 | 1 |" in table and "| gpu_checkpoint | 1 | 0 |" in table
    assert "input_pipeline (worsening) x1 | 1 |" in table
    assert [r["trace"] for r in replay_corpus(d, "tune")] == ["healthy-s0"]


def test_the_benchmark_run_replays_the_same_part_for_throughput(tmp_path, capsys):
    d = corpus(tmp_path / "traces")
    out = tmp_path / "out"
    assert run_main(["--no-h100", "--real-dir", str(d), "--split", "held_out",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Throughput, 4 traces of" in printed and "(held_out)" in printed
    saved = json.loads((out / "throughput_traces.json").read_text())
    assert sorted(t["trace"] for t in saved["traces"]) == [
        "checkpoint-s0", "gpu_contention-s0", "growing_slowdown-s0", "storage_stall-s0"]


def test_a_cause_recorded_by_another_family_gets_its_own_row_with_its_drop(tmp_path):
    """GPU-bound contention (family gpu_bound_contention) is scored apart from the
    launch-bound gpu_contention run; the table shows the job's drop from the labels."""
    d = tmp_path / "traces"
    d.mkdir()
    for name, family, drop in (("gpu_contention-s0", "gpu_gpu_contention", 0.1),
                               ("bound_contention-s1", "gpu_bound_contention", 0.41)):
        steps, nodes = _run(name, "gpu_contention", 5)
        _write(d, name, family, "held_out", steps + nodes,
               [{"start_time": A, "end_time": B, "cause": "gpu_contention",
                 "worsening": False, "drop": drop}])
    table = corpus_table(replay_corpus(d, "held_out"))
    assert "| gpu_contention | 1 | 1 |" in table
    assert "| gpu_contention (gpu_bound_contention) | 1 | 1 |" in table
    assert table.splitlines()[2].endswith("| 10% |")
    assert table.splitlines()[3].endswith("| 41% |")
