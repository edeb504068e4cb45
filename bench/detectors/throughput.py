"""Replay the throughput scenarios through the detectors and the diagnosis.

    python -m bench.detectors.throughput [--seeds 20] [--out out]
    python -m bench.detectors.throughput --real-dir OUT/traces --split held_out

For each scenario prints: found (or not) a drop, detection delay in seconds of
samples after the problem started, the diagnosis, and false alarms on the healthy ones.

With ``--real-dir``: the recorded GPU corpus (bench/detectors/record_gpu.py) instead,
each trace replayed through `sentinel detect FILE`'s own path
(``sentinel.rules.offline.detect_file``, the packaged rules: throughput-steps on the
step records and node records, then the diagnosis). Per cause (the labels'
``time_events``, from what was injected): detected or not, the delay from the cause's
start to the drop's and the diagnosis' ``detected_at`` (when a live run would have
emitted them), the cause named, ``worsening``; per family, false alarms: drops outside
every labelled cause (healthy, loss and checkpoint traces have none). ``--split`` keeps
one part of the corpus (tune on ``tune``, report on ``held_out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.detectors.corpus import trace_labels
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


# What a correct diagnosis names for each injected cause (record_gpu.py's labels): a
# dataloader whose cost grows is an input-pipeline cost when the steps report their wait
# (data_s), a job-wide software slowdown when they do not; either must say worsening.
EXPECTED = {"gpu_contention": {"gpu_contention"}, "storage_stall": {"storage_stall"},
            "growing_slowdown": {"input_pipeline", "job_wide_slowdown"}}
# A drop this close after a labelled cause's end is that cause's (the steps recover).
AFTER_S = 10.0


def replay_trace(path: Path, labels: dict[str, Any], work: Path) -> dict[str, Any]:
    """Replay one trace through `sentinel detect`'s path; score it against its labels."""
    from bench.detectors.gputrace import detect_input
    from sentinel.rules.offline import detect_file
    from sentinel.rules.rulefile import load_rules

    name = path.name.removesuffix(".jsonl")
    found = detect_file(detect_input(path, work), load_rules(), name)
    drops = [f for f in found if f.kind == "throughput_drop"]
    diags = {f.evidence.get("drop"): f for f in found if f.kind == "diagnosis"}
    events = []
    matched: set[str] = set()
    for ev in labels.get("time_events", []):
        a, b = float(ev["start_time"]), float(ev["end_time"])
        mine = sorted((d for d in drops if d.time_start is not None
                       and d.time_start <= b + AFTER_S
                       and (d.time_end if d.time_end is not None else d.time_start) >= a),
                      key=lambda d: d.detected_at or 0.0)
        matched |= {d.key for d in mine}
        row: dict[str, Any] = {"cause": ev["cause"], "detected": bool(mine),
                               "drop": ev.get("drop")}
        if mine:
            first = mine[0]
            diag = diags.get(first.key)
            row["delay_s"] = (first.detected_at or 0.0) - a
            if diag is not None:
                row["named"] = diag.evidence["cause"]
                row["named_delay_s"] = (diag.detected_at or 0.0) - a
                row["worsening"] = bool(diag.evidence.get("worsening"))
            row["right"] = (row.get("named") in EXPECTED.get(ev["cause"], {ev["cause"]})
                            and (row.get("worsening") or not ev.get("worsening")))
        events.append(row)
    return {"trace": name, "family": labels.get("family", "?"), "events": events,
            "false_alarms": [d.summary for d in drops if d.key not in matched]}


def replay_corpus(directory: Path, split: str | None) -> list[dict[str, Any]]:
    """Replay every trace of the corpus (or of one part of it)."""
    with tempfile.TemporaryDirectory() as work:
        return [replay_trace(p, lab, Path(work)) for p, lab in trace_labels(directory, split)]


def _delays(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "—"


def _drops(evs: list[dict[str, Any]]) -> str:
    """Return the labels' measured drops of the job (steps/s lost in the cause's window)."""
    return ", ".join(f"{e['drop']:.0%}" for e in evs if e.get("drop") is not None) or "—"


def corpus_table(results: list[dict[str, Any]]) -> str:
    """Return the markdown table of a replayed corpus: per cause, then false alarms."""
    lines = ["| cause | traces | detected | delay to the drop (s), median / max | delay to "
             "the diagnosis (s), median / max | named | right diagnosis | the job's drop "
             "(labels) |",
             "|---|---|---|---|---|---|---|---|"]
    causes: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        for ev in r["events"]:
            # A family that is not the cause's own (bound_contention: gpu_contention on a
            # GPU-bound job) gets its own row.
            own = r["family"] in ("?", f"gpu_{ev['cause']}")
            key = ev["cause"] if own else f"{ev['cause']} ({r['family']})"
            causes.setdefault(key, []).append(ev)
    for cause, evs in sorted(causes.items()):
        named = Counter(f"{e['named']}{' (worsening)' if e.get('worsening') else ''}"
                        for e in evs if "named" in e)
        lines.append(
            f"| {cause} | {len(evs)} | {sum(e['detected'] for e in evs)} | "
            f"{_delays([e['delay_s'] for e in evs if 'delay_s' in e])} | "
            f"{_delays([e['named_delay_s'] for e in evs if 'named_delay_s' in e])} | "
            f"{', '.join(f'{k} x{v}' for k, v in sorted(named.items())) or '—'} | "
            f"{sum(bool(e.get('right')) for e in evs)} | "
            f"{_drops(evs)} |")
    lines += ["", "| family | traces | false alarms (drops outside every labelled cause) |",
              "|---|---|---|"]
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        fams.setdefault(r["family"], []).append(r)
    for fam, rs in sorted(fams.items()):
        lines.append(f"| {fam} | {len(rs)} | {sum(len(r['false_alarms']) for r in rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default="out")
    ap.add_argument("--real-dir", type=Path, default=None,
                    help="a recorded GPU corpus (record_gpu.py's traces/) to replay instead")
    ap.add_argument("--split", choices=["tune", "held_out"], default=None,
                    help="only this part of the corpus (report on held_out; tune on tune)")
    args = ap.parse_args(argv)
    if args.real_dir is not None:
        results = replay_corpus(args.real_dir, args.split)
        print(corpus_table(results))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput_traces.json").write_text(json.dumps(
            {"real_dir": str(args.real_dir), "split": args.split, "traces": results},
            indent=1))
        return 0
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
