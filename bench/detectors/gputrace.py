"""A GPU-corpus trace as one `sentinel detect FILE` input: steps and node records together.

record_gpu.py writes each run's node records into its trace (one time-ordered file).
Recordings made before that wrote them apart, ``<name>.node.jsonl``, one row a second:
``{"time", "disk_read_latency_max_s", "disk_in_flight_max", "gpu_compute_processes",
"data_s_mean"}``; :func:`detect_input` turns such a pair into one file of the current
format (docs/DETECT-INPUT.md), so both replay through the same path:

* a row becomes a node record of the trace's node: ``disk_read_latency_s`` (0 meant "no
  reads" there: null), ``disk_in_flight``, ``gpu_processes`` of GPU "0" with
  ``gpu_ranks`` 1 (the trainer is the one rank on it);
* the steps get ``data_s``: the mean input wait of the steps that ended in the second
  the row closed (a row held the waits since the row before), so each step's wait is
  its second's mean: the share of the step time spent waiting is right per second,
  a single step's own wait is not known.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

from sentinel import jsonnum


def detect_input(trace: Path, work: Path) -> Path:
    """Return a file of ``trace`` that `sentinel detect` reads with its node records.

    A trace without a ``<name>.node.jsonl`` beside it is returned as it is.
    """
    rows_path = trace.with_name(trace.name.removesuffix(".jsonl") + ".node.jsonl")
    if not rows_path.exists():
        return trace
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["time"])
    times = [float(r["time"]) for r in rows]
    steps = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    node = next((s.get("node") for s in steps if s.get("node")), None)
    run = next((s.get("run") for s in steps if s.get("run")), None)
    out: list[tuple[float, dict[str, Any]]] = []
    for s in steps:
        i = bisect.bisect_left(times, float(s["time"]))
        if i < len(rows) and rows[i].get("data_s_mean") is not None:
            s["data_s"] = float(rows[i]["data_s_mean"])
        out.append((float(s["time"]), s))
    for r in rows:
        rec: dict[str, Any] = {"time": float(r["time"])}
        if run:
            rec["run"] = run
        if node:
            rec["node"] = node
        lat = r.get("disk_read_latency_max_s")
        rec["disk_read_latency_s"] = float(lat) if lat else None
        if r.get("disk_in_flight_max") is not None:
            rec["disk_in_flight"] = int(r["disk_in_flight_max"])
        if r.get("gpu_compute_processes") is not None:
            rec["gpu_processes"] = {"0": int(r["gpu_compute_processes"])}
            rec["gpu_ranks"] = {"0": 1}
        out.append((rec["time"], rec))
    work.mkdir(parents=True, exist_ok=True)
    dest = work / trace.name
    dest.write_text("".join(jsonnum.dumps(obj) + "\n"
                            for _t, obj in sorted(out, key=lambda x: x[0])))
    return dest
