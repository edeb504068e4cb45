"""Add newly recorded runs to a GPU corpus, each put in its split by record_gpu's rule.

    python -m bench.detectors.merge_gpu OUT [bench/detectors/curves/h200]

``OUT``: what ``record_gpu --out OUT`` wrote (``OUT/traces/`` or that folder itself).
Every run of the corpus keeps its part (``split.json``); each new run goes where
:func:`bench.detectors.record_gpu.split` puts it given those (the part of its family with
fewer runs, tune on a tie; a family's only run is held out), so each family, and each
throughput cause recorded twice, has a tune and a held-out run. A run the corpus already
has is refused (nothing is written): record it under another name.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from bench.detectors.corpus import GPU_DIR, trace_labels
from bench.detectors.record_gpu import split


def _existing(dest: Path) -> tuple[dict[str, str], list[str]]:
    """Return the corpus's name -> part, and its skipped runs, checked against its labels."""
    path = dest / "split.json"
    if not path.exists():
        raise ValueError(f"{dest}: no split.json (a corpus of record_gpu.py has one)")
    parts = json.loads(path.read_text())
    keep = {n: part for part in ("tune", "held_out") for n in parts.get(part, [])}
    for trace, labels in trace_labels(dest):
        name = trace.name.removesuffix(".jsonl")
        if keep.get(name) != labels.get("split"):
            raise ValueError(f"{dest}: {name} is {keep.get(name)!r} in split.json but "
                             f"{labels.get('split')!r} in its labels")
    return keep, list(parts.get("skipped", []))


def merge(src: Path, dest: Path = GPU_DIR) -> dict[str, list[str]]:
    """Copy the runs of ``src`` into ``dest``; return the new runs by part."""
    if (src / "traces").is_dir():
        src = src / "traces"
    keep, skipped = _existing(dest)
    new = {p.name.removesuffix(".jsonl"): (p, lab) for p, lab in trace_labels(src)}
    if not new:
        raise ValueError(f"{src}: no traces (<name>.jsonl with <name>.labels.json)")
    clash = sorted(set(new) & set(keep))
    if clash:
        raise ValueError(f"{dest} already has {', '.join(clash)}: nothing merged")
    families: dict[str, list[str]] = {}
    for trace, labels in trace_labels(dest):
        families.setdefault(labels["family"], []).append(trace.name.removesuffix(".jsonl"))
    for name, (_p, labels) in new.items():
        families.setdefault(labels["family"], []).append(name)
    parts = split(families, keep)
    part_of = {n: part for part, names in parts.items() for n in names}
    moved = sorted(n for n, p in keep.items() if part_of[n] != p)
    if moved:  # split() keeps them; this guards the reported numbers' comparability
        raise ValueError(f"the split rule moved {', '.join(moved)}: nothing merged")
    for name, (trace, labels) in sorted(new.items()):
        shutil.copyfile(trace, dest / trace.name)
        lab: dict[str, Any] = {**labels, "split": part_of[name]}
        (dest / f"{name}.labels.json").write_text(json.dumps(lab, indent=1))
    (dest / "split.json").write_text(json.dumps({**parts, "skipped": skipped}, indent=1))
    return {part: sorted(n for n in names if n in new) for part, names in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="record_gpu's --out folder (or its traces/)")
    ap.add_argument("dest", type=Path, nargs="?", default=GPU_DIR,
                    help="the corpus to add to (default: bench/detectors/curves/h200)")
    args = ap.parse_args(argv)
    try:
        added = merge(args.src, args.dest)
    except ValueError as e:
        ap.error(str(e))
    for part, names in added.items():
        print(f"merge_gpu: {part}: {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
