#!/usr/bin/env python3
"""MTTR of rollback_skip: a real job, a real agent, the controller, a corrupted shard.

    python bench/controller_mttr.py --config tiny                      # CPU
    python bench/controller_mttr.py --config gpt100m --device cuda     # GPU

Runs examples/train_gpt.py reporting to a ``sentinel agent`` process, with ``--bad-count``
consecutive corrupted batches from ``--bad-start`` (60: a shard long enough that the
spike heals slowly, which the default policy rolls back; docs/DESIGN.md, Controller ->
rollback_skip), and a controller built from a config like the daemon's (default policy,
act mode, journal in ``--out``). It waits for the rollback to be verified and reads the
times off the job's log and the journal:

- bad batch: the first corrupted batch's step ended (the job's log);
- finding: the incident opened (the first finding of the spike, still "pending");
- decision: the policy decided to roll back (the spike classified);
- resumed: the job's first step after the rollback ended (the job's log);
- verified: the controller found the loss back on its trend.

MTTR is bad batch -> verified. Prints a table and writes ``--out/mttr.json``. Needs the
controller's dependencies (PyYAML, requests, prometheus-client); one run per call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "train_gpt.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_agent(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start ``sentinel agent`` on a free port; return it, its URL and its socket."""
    import requests

    port, sock = _free_port(), str(tmp / "agent.sock")
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "agent",
                             f"--listen-address=127.0.0.1:{port}", f"--socket={sock}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return proc, url, sock
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the agent did not start: {(tmp / 'agent.log').read_text()[-2000:]}")


def _read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "log" / "rank0.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []


def _config(out: Path, run_dir: Path, agent: str, job: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    return {
        "controller": {"journal": str(out / "controller.db"), "scheduler": "none",
                       "interval_seconds": args.interval, "listen_address": "",
                       "verify_steps": args.verify_steps},
        "policy": {"rollback_skip_mode": "act"},
        "jobs": [{"name": job, "run_dir": str(run_dir), "agent": agent}],
    }


def _times(journal: Any, log: list[dict[str, Any]], bad_start: int) -> dict[str, float]:
    """Return the phases' wall-clock times (unix seconds)."""
    [inc] = journal.incidents()
    [act] = [a for a in journal.actions(incident_id=inc.id) if a.state == "verified"]
    decided = min(d["time"] for d in journal.decisions(inc.id)
                  if d["action"] == "rollback_skip" and not d["refusal"])
    rb = next(i for i, e in enumerate(log) if e["event"] == "rollback")
    bad = next(e for e in log if e["event"] == "step" and e["step"] == bad_start)
    resumed = next(e for e in log[rb:] if e["event"] == "step")
    return {"bad_batch": bad["time"], "finding": inc.opened_at, "decision": decided,
            "resumed": resumed["time"], "verified": float(act.ended_at or act.updated_at)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the job under the controller until the rollback is verified; return figures."""
    from sentinel.controller.daemon import build, serve

    out = Path(args.out or tempfile.mkdtemp(prefix="sentinel-mttr-"))
    out.mkdir(parents=True, exist_ok=True)
    run_dir, job_name = out / "run", f"mttr-{args.config}"
    bad = ",".join(str(i) for i in range(args.bad_start, args.bad_start + args.bad_count))
    agent, url, sock = _start_agent(out)
    job = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--config", args.config, "--device", args.device,
         "--run-dir", str(run_dir), "--job", job_name, "--max-steps", str(args.max_steps),
         "--checkpoint-every", str(args.checkpoint_every), "--eval-every", "100000",
         "--inject-bad-batch", bad, *(["--threads", "1"] if args.device == "cpu" else [])],
        cwd=ROOT, env={**os.environ, "SENTINEL_AGENT_SOCKET": sock},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = build(_config(out, run_dir, url, job_name, args))
    stop = threading.Event()
    loop = threading.Thread(target=serve, args=(parts, stop), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            acts = parts.journal.actions()
            if acts and acts[-1].state in ("verified", "failed"):
                break
            if job.poll() is not None:
                raise SystemExit(f"the job ended first ({job.returncode}); see {run_dir}/log")
            time.sleep(0.5)
        else:
            raise SystemExit(f"no verified rollback within {args.timeout:.0f} s")
        if acts[-1].state != "verified":
            raise SystemExit(f"rollback_skip {acts[-1].state}: {acts[-1].error}")
        t = _times(parts.journal, _read_log(run_dir), args.bad_start)
        plan = acts[-1].plan
    finally:
        stop.set()
        loop.join(30)
        for p in (job, agent):
            p.terminate()
            p.wait(30)
    phases = {"detect (bad batch -> finding)": t["finding"] - t["bad_batch"],
              "decide (finding -> decision)": t["decision"] - t["finding"],
              "recover (decision -> first step after the rollback)": t["resumed"] - t["decision"],
              "verify (first step -> verified)": t["verified"] - t["resumed"],
              "MTTR (bad batch -> verified)": t["verified"] - t["bad_batch"]}
    result = {"config": args.config, "device": args.device, "bad_batches": args.bad_count,
              "spike": plan["spike"], "to_step": plan["to_step"],
              "steps_lost": plan["steps_lost"], "skipped_batches": plan["skipped_batches"],
              "phases_s": phases, "times": t}
    (out / "mttr.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="examples/train_gpt.py config")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bad-start", type=int, default=110, help="first corrupted batch")
    ap.add_argument("--bad-count", type=int, default=60, help="consecutive corrupted batches")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--verify-steps", type=int, default=200)
    ap.add_argument("--interval", type=float, default=2.0,
                    help="controller.interval_seconds (15 s in production: detection waits "
                         "up to one cycle more)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", default="", help="directory for the run, journal and mttr.json")
    args = ap.parse_args(argv)
    r = run(args)
    print(f"rollback_skip MTTR, --config {r['config']} --device {r['device']}, "
          f"{r['bad_batches']} bad batches; spike {r['spike']['step_start']}-"
          f"{r['spike']['step_end']} ({r['spike']['class']}), back to {r['to_step']}, "
          f"{r['steps_lost']} steps lost, {r['skipped_batches']} batches skipped")
    for name, s in r["phases_s"].items():
        print(f"  {name:<55} {s:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
