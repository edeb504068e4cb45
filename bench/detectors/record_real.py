"""Record real loss curves on a GPU with examples/train_gpt.py, with their labels.

    python -m bench.detectors.record_real [--config small] [--steps 1500] [--out out]

Runs (each in its own run directory, no agent needed):
  * ``healthy``     — a normal run;
  * ``bad_batch``   — the same with corrupted batches injected at three steps;
  * ``high_lr``     — a peak learning rate 10x the config's;
  * ``resumed``     — a normal run stopped at 60% and resumed from an earlier checkpoint.
Writes ``<out>/curves/<name>.jsonl`` and ``<name>.labels.json`` (format: corpus.py).
Copy them into bench/detectors/curves/real/ and run ``python -m bench.detectors.run``.

Labels do not come from any detector under test: a bad batch injected at S is an
event [S, S + BAD_BATCH_SPAN]; the high-LR run is an event from the first step whose
loss exceeds 1.5x the lowest loss so far (after the warm-up) to the end, or healthy
if that never happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from sentinel.rules.jsonl import read_steps

ROOT = Path(__file__).resolve().parents[2]
BAD_BATCH_SPAN = 20  # steps a corrupted batch may disturb the loss for
RUN_TIMEOUT_S = 1800


def _train(out: Path, name: str, extra: list[str], args: argparse.Namespace) -> Path:
    log = out / "curves" / f"{name}.jsonl"
    cmd = [sys.executable, str(ROOT / "examples" / "train_gpt.py"), "--config", args.config,
           "--max-steps", str(args.steps), "--run-dir", str(out / "runs" / name),
           "--log-jsonl", str(log), "--device", args.device, "--job", f"real-{name}", *extra]
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    subprocess.run(cmd, check=True, timeout=RUN_TIMEOUT_S, env=env)
    return log


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(p.step, p.loss) for p in read_steps(path)]


def _label(path: Path, labels: dict[str, object]) -> None:
    path.with_suffix(".labels.json").write_text(json.dumps(labels, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="small")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--high-lr", type=float, default=0.02,
                    help="peak LR of the unstable run (the small config's is 1e-3)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "curves").mkdir(parents=True, exist_ok=True)

    log = _train(out, "healthy", ["--no-resume"], args)
    _label(log, {"healthy": True, "family": "real_healthy", "events": []})

    bad = [int(args.steps * f) for f in (0.35, 0.6, 0.85)]
    log = _train(out, "bad_batch", ["--no-resume", "--no-rollback-handler",
                                    "--inject-bad-batch", ",".join(map(str, bad))], args)
    _label(log, {"healthy": False, "family": "real_bad_batch",
                 "events": [{"start": s, "end": s + BAD_BATCH_SPAN, "kind": "spike"}
                            for s in bad]})

    log = _train(out, "high_lr", ["--no-resume", "--lr", str(args.high_lr)], args)
    pts = _losses(log)
    warm = len(pts) // 10
    low = math.inf
    start = None
    for i, (step, v) in enumerate(pts):
        if i >= warm and (not math.isfinite(v) or v > 1.5 * low):
            start = step
            break
        if math.isfinite(v):
            low = min(low, v)
    if start is None:
        _label(log, {"healthy": True, "family": "real_high_lr", "events": []})
    else:
        _label(log, {"healthy": False, "family": "real_high_lr",
                     "events": [{"start": start, "end": pts[-1][0], "kind": "divergence"}]})

    stop_at = int(args.steps * 0.6)
    # --keep 100 keeps every checkpoint, so the resume can go back ~150 steps.
    log = _train(out, "resumed", ["--no-resume", "--keep", "100"],
                 argparse.Namespace(**{**vars(args), "steps": stop_at}))
    _train(out, "resumed", ["--resume-from", str(max(0, stop_at - 150) // 50 * 50),
                            "--keep", "100"], args)
    _label(log, {"healthy": True, "family": "real_resumed", "events": []})
    print(f"curves and labels in {out / 'curves'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
