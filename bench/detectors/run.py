"""Run the loss-spike benchmark: sentinel vs the peers on recorded, labeled curves.

    python -m bench.detectors.run                  # the report: H200 held_out + H100 curves
    python -m bench.detectors.run --split tune     # the H200 tune split (thresholds are
                                                   # chosen looking at this only)
    python -m bench.detectors.run --real-dir OUT/traces --split held_out   # a new recording
    python -m bench.detectors.run --synthetic 12   # adds the synthetic corpus (a unit-test
                                                   # aid, never the benchmark)
        [--out out] [--write-docs] [--no-throughput]

Each set of curves gets its own tables (per family: sentinel and every peer; overall).
Writes ``<out>/detectors.json`` and, with ``--write-docs`` (held_out only), replaces the
generated block in docs/BENCHMARKS.md. The same part of the recorded corpus is also
replayed for throughput through `sentinel detect`'s path (bench/detectors/throughput.py):
its table is printed after the loss-spike ones and written to
``<out>/throughput_traces.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from bench.detectors.corpus import GPU_DIR, REAL_DIR, Curve, load_real, synthetic
from bench.detectors.evaluate import MERGE_GAP, TOLERANCE, markdown, pivot, run_benchmark
from bench.detectors.throughput import corpus_table, replay_corpus

ROOT = Path(__file__).resolve().parents[2]
BEGIN = "<!-- generated: bench/detectors/run.py begin -->"
END = "<!-- generated: bench/detectors/run.py end -->"


def _sets(args: argparse.Namespace) -> list[tuple[str, list[Curve]]]:
    """Return the named sets of curves to score, the report's first."""
    sets = [(f"{args.real_dir.name} {args.split}", load_real(args.real_dir, args.split))]
    # The H100 curves are held back: scored with a held_out report, never while tuning.
    if args.split == "held_out" and args.h100 and args.real_dir.resolve() != REAL_DIR:
        sets.append(("H100 curves (held back)", load_real(REAL_DIR)))
    if args.synthetic:
        sets.append((f"synthetic (seed {args.seed}, unit-test aid)",
                     synthetic(args.synthetic, args.steps, args.seed)))
    return sets


def _summary(result: dict[str, Any]) -> str:
    """Return one line on sentinel's score, naming every miss and false alarm."""
    m = result["overall"]["sentinel"]
    d = result["details"]["sentinel"]
    f1 = "—" if m["f1"] is None else f"{m['f1']:.3f}"
    return (f"sentinel F1 {f1}, {m['detected']}/{m['events']} events, "
            f"false alarms {d['false_alarms'] or 'none'}, missed {d['missed'] or 'none'}")


def _docs_block(results: list[tuple[str, list[Curve], dict[str, Any]]]) -> str:
    parts = [f"{BEGIN}\nAlarm merge gap {MERGE_GAP} steps, match tolerance {TOLERANCE} steps "
             "after an event's end; a cell is F1 (events found / events, median delay in "
             "steps) for a family with events, false alarms for a family without.\n"]
    for title, curves, result in results:
        parts.append(f"**{title}** ({len(curves)} curves, "
                     f"{sum(len(c.steps) for c in curves):,} steps): {_summary(result)}"
                     f"\n\n{pivot(result)}\n")
    return "\n".join(parts) + END


def write_docs(block: str, doc: Path) -> None:
    """Replace the generated block of ``doc`` (or append one)."""
    text = doc.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--real-dir", type=Path, default=GPU_DIR,
                    help="recorded curves with a tune/held_out split (default: the H200 "
                         "corpus, bench/detectors/curves/h200)")
    ap.add_argument("--split", choices=["tune", "held_out"], default="held_out",
                    help="which part to score: report on held_out, tune on tune")
    ap.add_argument("--no-h100", dest="h100", action="store_false",
                    help="leave out the held-back H100 curves (curves/real/)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="PER_FAMILY",
                    help="also score this many synthetic curves per family")
    ap.add_argument("--steps", type=int, default=3000, help="synthetic curves' length")
    ap.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    ap.add_argument("--out", default="out")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--no-throughput", dest="throughput", action="store_false",
                    help="skip the throughput replay of the recorded corpus")
    args = ap.parse_args(argv)
    if args.write_docs and (args.split != "held_out" or args.synthetic):
        ap.error("--write-docs reports the held_out split only (no --split tune, no "
                 "--synthetic)")
    results = []
    for title, curves in _sets(args):
        result = run_benchmark(curves)
        results.append((title, curves, result))
        print(f"## {title}\n\n{markdown(result)}\n\n{title}: {_summary(result)}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"real_dir": str(args.real_dir), "split": args.split, "synthetic": args.synthetic,
            "steps": args.steps, "seed": args.seed, "machine": platform.platform(),
            "python": sys.version.split()[0]}
    (out / "detectors.json").write_text(json.dumps(
        {"meta": meta, "sets": {t: r for t, _, r in results}}, indent=1))
    if args.throughput:
        traces = replay_corpus(args.real_dir, args.split)
        print(f"\nThroughput, {len(traces)} traces of {args.real_dir} ({args.split}), replayed "
              f"through sentinel detect:\n\n{corpus_table(traces)}")
        (out / "throughput_traces.json").write_text(json.dumps(
            {"meta": meta, "traces": traces}, indent=1))
    if args.write_docs:
        write_docs(_docs_block(results), ROOT / "docs" / "BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
