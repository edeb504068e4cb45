"""Run the loss-spike benchmark: sentinel vs the peers on the labeled corpus.

    python -m bench.detectors.run [--per-family 12] [--steps 3000] [--seed 0]
        [--out out] [--write-docs] [--real-dir OUT/traces --split held_out]

Prints a markdown table, writes ``<out>/detectors.json`` and, with ``--write-docs``,
replaces the generated block in docs/BENCHMARKS.md. With ``--real-dir`` (the GPU corpus
of record_gpu.py) the same part of the corpus is also replayed for throughput through
`sentinel detect`'s path (bench/detectors/throughput.py): its table is printed after
the loss-spike one and written to ``<out>/throughput_traces.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from bench.detectors.corpus import load_real, synthetic
from bench.detectors.evaluate import MERGE_GAP, TOLERANCE, markdown, run_benchmark
from bench.detectors.throughput import corpus_table, replay_corpus

ROOT = Path(__file__).resolve().parents[2]
BEGIN = "<!-- generated: bench/detectors/run.py begin -->"
END = "<!-- generated: bench/detectors/run.py end -->"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-family", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out")
    ap.add_argument("--no-real", action="store_true", help="skip curves/real/")
    ap.add_argument("--real-dir", type=Path, default=None,
                    help="recorded curves to use instead of curves/real/ (record_gpu.py's "
                         "traces/)")
    ap.add_argument("--split", choices=["tune", "held_out"], default=None,
                    help="only the curves of this part of a split corpus (report on "
                         "held_out; tune on tune)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    curves = synthetic(args.per_family, args.steps, args.seed)
    real = [] if args.no_real else (
        load_real(args.real_dir, args.split) if args.real_dir else load_real(split=args.split))
    result = run_benchmark(curves + real)
    table = markdown(result)
    print(table)
    overall = result["overall"]["sentinel"]
    print(f"\nsentinel overall F1 {overall['f1']:.3f}; "
          f"false alarms {result['details']['sentinel']['false_alarms']}; "
          f"missed {result['details']['sentinel']['missed']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"per_family": args.per_family, "steps": args.steps, "seed": args.seed,
            "real_curves": len(real), "real_dir": str(args.real_dir or "curves/real"),
            "split": args.split, "machine": platform.platform(),
            "python": sys.version.split()[0]}
    (out / "detectors.json").write_text(json.dumps({"meta": meta, **result}, indent=1))
    if args.real_dir is not None:
        traces = replay_corpus(args.real_dir, args.split)
        print(f"\nThroughput, {len(traces)} traces of {args.real_dir}"
              f"{f' ({args.split})' if args.split else ''}, replayed through sentinel "
              f"detect:\n\n{corpus_table(traces)}")
        (out / "throughput_traces.json").write_text(json.dumps(
            {"meta": meta, "traces": traces}, indent=1))
    if args.write_docs:
        doc = ROOT / "docs" / "BENCHMARKS.md"
        text = doc.read_text()
        block = (
            f"{BEGIN}\nCorpus: {args.per_family} synthetic curves per family x {args.steps} steps "
            f"(seed {args.seed}), {len(real)} real curves. Alarm merge gap {MERGE_GAP} steps, "
            f"match tolerance {TOLERANCE} steps after an event's end.\n\n{table}\n{END}"
        )
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = head + block + tail
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        doc.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
