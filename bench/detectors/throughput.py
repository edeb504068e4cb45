"""Replay the throughput scenarios through the detectors and the diagnosis.

    python -m bench.detectors.throughput [--seeds 20] [--out out]

For each scenario prints: found (or not) a drop, detection delay in seconds of
samples after the problem started, the diagnosis, and false alarms on the healthy ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench.detectors.scenarios import RES, SCENARIOS, Scenario
from sentinel.rules.detectors import (
    diagnosis,
    disk_latency,
    gpu_contention,
    gpu_throttle,
    throughput_drop,
)
from sentinel.rules.finding import Finding
from sentinel.rules.window import Series, Window


def evaluate(sc: Scenario) -> list[Finding]:
    """Run throughput, disk, throttle detectors then the diagnosis on a scenario."""
    w = Window(job="bench", series=sc.series, step_s=RES, range_s=1200.0)
    found = throughput_drop.detect(w, throughput_drop.Params())
    found += disk_latency.detect(w, disk_latency.Params())
    # The throttle rule looks at the last 10 minutes, as the default rule does.
    end = max(t for ss in sc.series["tokens_per_sec"] for t, _ in ss.points)
    recent = {role: [Series(ss.labels, [(t, v) for t, v in ss.points if t > end - 600.0])
                     for ss in lst] for role, lst in sc.series.items()}
    found += gpu_throttle.detect(Window(job="bench", series=recent, step_s=RES, range_s=600.0),
                                 gpu_throttle.Params())
    # The contention rule looks at the last 5 minutes as of each minute of the replay
    # (its finding is about a process running now, so one look at the end would miss
    # one that stopped): findings of the same GPU merge into one.
    for t_end in range(int(min(t for ss in sc.series["tokens_per_sec"] for t, _ in ss.points))
                       + 300, int(end) + 1, 60):
        part = {"extra_processes": [Series(ss.labels, [(t, v) for t, v in ss.points
                                                       if t_end - 300 < t <= t_end])
                                    for ss in sc.series.get("extra_processes", [])]}
        for f in gpu_contention.detect(Window(job="bench", series=part, step_s=RES,
                                              now=float(t_end)), gpu_contention.Params()):
            same = [g for g in found if g.kind == f.kind and g.gpu == f.gpu]
            if same:
                same[0].time_end = f.time_end
            else:
                found.append(f)
    found += diagnosis.detect(Window(findings=list(found)), diagnosis.Params())
    return found


def score(sc: Scenario, found: list[Finding]) -> dict[str, Any]:
    """Summarise what the detectors said about one scenario."""
    drops = [f for f in found if f.kind == "throughput_drop"]
    diags = [f for f in found if f.kind == "diagnosis"]
    out: dict[str, Any] = {"scenario": sc.name, "drops": len(drops)}
    if sc.drop_start is None:
        out["false_alarm"] = bool(drops)
        return out
    flagged = [float(f.evidence["flagged_at"]) for f in drops
               if float(f.evidence["flagged_at"]) >= sc.drop_start]
    out["delay_s"] = (min(flagged) - sc.drop_start) if flagged else None
    causes = [d.evidence["cause"] for d in diags]
    out["causes"] = sorted(set(causes))
    out["right_cause"] = sc.expected_cause in causes and all(
        c == sc.expected_cause for c in causes)
    if sc.expected_node:
        out["right_node"] = all(d.node == sc.expected_node for d in diags)
    if sc.worsening:
        out["worsening"] = any(d.evidence.get("worsening") for d in diags)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    rows = []
    for make in SCENARIOS:
        res = [score(sc, evaluate(sc)) for sc in (make(seed) for seed in range(args.seeds))]
        healthy = "false_alarm" in res[0]
        row: dict[str, Any] = {"scenario": res[0]["scenario"], "runs": len(res)}
        if healthy:
            row["false_alarms"] = sum(r["false_alarm"] for r in res)
        else:
            delays = [r["delay_s"] for r in res if r["delay_s"] is not None]
            row["detected"] = len(delays)
            row["median_delay_s"] = statistics.median(delays) if delays else None
            row["max_delay_s"] = max(delays) if delays else None
            row["right_cause"] = sum(r["right_cause"] for r in res)
            if "worsening" in res[0]:
                row["said_worsening"] = sum(r["worsening"] for r in res)
        rows.append(row)
    print("| scenario | runs | detected | median delay (s) | max delay (s) | right diagnosis | "
          "said worsening | false alarms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['runs']} | {r.get('detected', '—')} | "
              f"{r.get('median_delay_s', '—')} | {r.get('max_delay_s', '—')} | "
              f"{r.get('right_cause', '—')} | {r.get('said_worsening', '—')} | "
              f"{r.get('false_alarms', '—')} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput_scenarios.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
