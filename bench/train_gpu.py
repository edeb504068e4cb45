#!/usr/bin/env python3
"""Benchmark the training side of recovery on a GPU with examples/train_gpt.py.

Part 1 (recovery), with ``--config`` (default gpt100m, ~100M parameters):
- tokens/sec (median over steps, the first 10 dropped as warm-up);
- checkpoint save time (each save) and load time (restart: read + verify + restore);
- in-process rollback: time from writing the signed request (and SIGUSR1) to the end
  of the first step after it, ``--repeats`` times, against a full process restart
  from the same checkpoint: time from spawning ``python examples/train_gpt.py
  --resume-from S`` to the end of its first step. Medians and their ratio.

Part 2 (``--curves``, on by default): loss curves for the rules benchmark, in the
detector-input JSON-lines format: a clean run, a run with bad batches injected at a
few steps, and a run with a too-high learning rate; ``labels.json`` says which steps
are bad. Everything goes into ``--out`` (default ./out/train_gpu); the summary is also
printed. Needs only torch (no PyYAML): the request is submitted with
``sentinel.train.request``, the module ``sentinel rollback`` uses.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "train_gpt.py"

from sentinel.train.request import read_result, submit  # noqa: E402


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "log" / "rank0.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def wait(pred: Any, proc: subprocess.Popen[str], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc.poll() is not None:
            raise SystemExit(f"job exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.01)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def example(run_dir: Path, cfg: str, *extra: str) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--config", cfg, "--run-dir", str(run_dir),
            "--eval-every", "100000", *extra]


def recovery(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / "recovery_run"
    back_to, ahead = args.checkpoint_every * 2, args.checkpoint_every // 2
    log_f = open(out / "recovery_job.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        example(run_dir, args.config, "--no-resume", "--max-steps", "100000",
                "--checkpoint-every", str(args.checkpoint_every), "--keep", "5"),
        stdout=log_f, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    rollbacks = []
    try:
        for i in range(args.repeats):
            n_rb = i
            # wait until the job is `ahead` steps past the rollback target (again)
            def past(n_rb: int = n_rb) -> bool:
                log = read_log(run_dir)
                rbs = [k for k, e in enumerate(log) if e["event"] == "rollback"]
                if len(rbs) < n_rb:
                    return False
                tail = log[rbs[n_rb - 1] + 1:] if n_rb else log
                return any(e["event"] == "step" and e["step"] >= back_to + ahead for e in tail)
            wait(past, proc, 900, f"step {back_to + ahead}")
            t_req = time.time()
            req = submit(run_dir, f"gpt-{args.config}", back_to, [], request_id=uuid.uuid4().hex,
                         requested_by="bench", reason="bench", pids=[proc.pid]).request
            res = wait(lambda r=req: read_result(run_dir, r.id), proc, 300, "rollback result")
            assert res["status"] == "done", res

            def first_after(rid: str = req.id) -> dict[str, Any] | None:
                log = read_log(run_dir)
                idx = [k for k, e in enumerate(log) if e.get("request") == rid]
                if not idx:
                    return None
                return next((e for e in log[idx[0]:] if e["event"] == "step"), None)
            first = wait(first_after, proc, 300, "first step after the rollback")
            rollbacks.append({"to_step": back_to, "from_step": res["from_step"],
                              "request_to_first_step_s": first["time"] - t_req,
                              "read_s": res["read_s"], "restore_s": res["restore_s"],
                              "step_s": first["step_s"]})
            print(f"in-process rollback {i + 1}: {rollbacks[-1]}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_f.close()
    log = read_log(run_dir)
    steps = [e for e in log if e["event"] == "step"]
    tps = [e["tokens_per_sec"] for e in steps[10:]]
    saves = [e["save_s"] for e in log if e["event"] == "checkpoint" and e["step"] > 0]
    start = next(e for e in log if e["event"] == "start")
    ckpt_bytes = sum(p.stat().st_size for p in (run_dir / "checkpoints").glob("step_*.pt")) / max(
        1, len(list((run_dir / "checkpoints").glob("step_*.pt"))))

    restarts = []
    for i in range(args.repeats):
        t0 = time.time()
        with open(out / f"restart_{i}.log", "w") as f:
            p = subprocess.Popen(
                example(run_dir, args.config, "--resume-from", str(back_to),
                        "--max-steps", str(back_to + 2), "--checkpoint-every", "100000",
                        "--no-rollback-handler"),
                stdout=f, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            pid = p.pid

            def first_step(pid: int = pid) -> dict[str, Any] | None:
                return next((e for e in read_log(run_dir)
                             if e["pid"] == pid and e["event"] == "step"), None)
            first = wait(first_step, p, 600, "the restarted job's first step")
            p.wait(120)
        resume = next(e for e in read_log(run_dir) if e["pid"] == pid and e["event"] == "resume")
        restarts.append({"spawn_to_first_step_s": first["time"] - t0, "load_s": resume["load_s"],
                         "step_s": first["step_s"]})
        print(f"restart {i + 1}: {restarts[-1]}", flush=True)

    med_in = statistics.median(r["request_to_first_step_s"] for r in rollbacks)
    med_re = statistics.median(r["spawn_to_first_step_s"] for r in restarts)
    return {
        "config": args.config, "params": start["params"], "device": start["device"],
        "tokens_per_sec_median": statistics.median(tps) if tps else None,
        "step_s_median": statistics.median(e["step_s"] for e in steps[10:]) if tps else None,
        "checkpoint_bytes": ckpt_bytes,
        "checkpoint_save_s": saves, "checkpoint_save_s_median": statistics.median(saves),
        "restart_load_s_median": statistics.median(r["load_s"] for r in restarts),
        "rollback_read_s_median": statistics.median(r["read_s"] for r in rollbacks),
        "rollback_restore_s_median": statistics.median(r["restore_s"] for r in rollbacks),
        "in_process": rollbacks, "restart": restarts,
        "in_process_request_to_first_step_s_median": med_in,
        "restart_spawn_to_first_step_s_median": med_re,
        "restart_over_in_process": med_re / med_in,
    }


def curves(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    n = args.curve_steps
    bad = [int(n * f) for f in (0.4, 0.6, 0.8)]
    bad_batches = sorted({b + k for b in bad for k in range(args.bad_run)})
    high_lr = args.high_lr
    runs = [
        ("clean", [], {"kind": "clean", "bad_steps": []}),
        ("bad_batches", ["--inject-bad-batch", ",".join(map(str, bad_batches))],
         {"kind": "bad_batch", "bad_steps": bad_batches}),
        ("lr_too_high", ["--lr", str(high_lr)],
         {"kind": "lr_too_high", "lr": high_lr, "bad_steps": []}),
    ]
    labels = []
    for name, extra, label in runs:
        jsonl = out / f"curve_{name}.jsonl"
        jsonl.unlink(missing_ok=True)
        t0 = time.monotonic()
        subprocess.run(
            example(out / f"curve_{name}_run", args.config, "--no-resume", "--max-steps", str(n),
                    "--checkpoint-every", "100000", "--log-jsonl", str(jsonl),
                    "--no-rollback-handler", *extra),
            check=True, cwd=ROOT, timeout=900, stdout=subprocess.DEVNULL)
        labels.append({"file": jsonl.name, "steps": n, "config": args.config, **label})
        print(f"curve {name}: {time.monotonic() - t0:.0f} s -> {jsonl}", flush=True)
    (out / "labels.json").write_text(json.dumps({"runs": labels}, indent=1))
    return {"labels": labels}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/train_gpu"))
    ap.add_argument("--config", default="gpt100m", choices=["tiny", "small", "gpt100m"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--curves", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--recovery", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--curve-steps", type=int, default=600)
    ap.add_argument("--bad-run", type=int, default=2, help="consecutive bad batches per spike")
    ap.add_argument("--high-lr", type=float, default=6e-3, help="10x the gpt100m default")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    if args.recovery:
        results["recovery"] = recovery(args, out)
    if args.curves:
        results["curves"] = curves(args, out)
    results["wall_s"] = time.monotonic() - t0
    (out / "train_gpu.json").write_text(json.dumps(results, indent=1))
    rec = results.get("recovery")
    if rec:
        r = rec
        print(f"\n{r['config']} ({r['params'] / 1e6:.0f}M params, {r['device']}): "
              f"{r['tokens_per_sec_median']:.0f} tokens/s, checkpoint "
              f"{r['checkpoint_bytes'] / 1e9:.2f} GB saved in "
              f"{r['checkpoint_save_s_median']:.2f} s")
        print("in-process rollback, request to first step: "
              f"{r['in_process_request_to_first_step_s_median']:.2f} s (read "
              f"{r['rollback_read_s_median']:.2f} s + restore "
              f"{r['rollback_restore_s_median']:.2f} s)")
        print("process restart, spawn to first step: "
              f"{r['restart_spawn_to_first_step_s_median']:.2f} s "
              f"(load {r['restart_load_s_median']:.2f} s): {r['restart_over_in_process']:.1f}x")
    print(f"results in {out / 'train_gpu.json'} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
