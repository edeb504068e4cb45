"""MTTR of a spare swap on a local Slurm: finding handed over -> job running on the new set.

    python bench/spare_swap_mttr.py [--runs 5] [--out out]

Starts the tests' local cluster (tests/support/slurm.py: munged, slurmctld, 5 slurmd;
node1-4 in the explicit-node reservation `train` running a requeueable job, node5 the
staged spare, burned in once by the controller's burnin action). Each run gives the
controller (wired as `sentinel controller run` wires it, spare_swap in act mode) an XID
finding on node3 and times, from that moment: the decision, the drain, the reservation
change, the requeue (journal step ends), and the first moment squeue shows the job
RUNNING on node1,2,4,5 (polled every 0.1 s by this script, apart from the controller).
The burn-in of node3 that follows is not counted (it is timed separately). Prints a
table and the medians; writes <out>/spare_swap_mttr.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentinel.rules.finding import Finding  # noqa: E402
from tests.support.controller import ScriptedDetector  # noqa: E402
from tests.support.slurm import SlurmCluster, run_slurm  # noqa: E402
from tests.support.slurm_driver import config, make, run_until_done  # noqa: E402

JOB = "#!/bin/bash\nexec sleep 3600\n"
NEW_SET = ("node1", "node2", "node4", "node5")


def xid(node: str, t: float) -> Finding:
    return Finding(kind="gpu_xid", severity="critical", suggested_action="spare_swap",
                   summary=f"XID 79 (fallen off the bus) on {node} GPU 3: 1 new",
                   detector="gpu_errors", rule="gpu-errors", job="gpt-7b", node=node, gpu="3",
                   evidence={"xid": 79}, episode="79", time_start=t)


def template(c: SlurmCluster, tmp: Path) -> Path:
    """Burn the spare in through the controller once; runs start from a copy of its journal."""
    case = tmp / "template"
    case.mkdir()
    det = ScriptedDetector([[Finding(kind="spare_admission", severity="info",
                                     suggested_action="burnin", detector="operator",
                                     summary="node5 staged: burn it in", node="node5")]])
    parts = make(config(case), case / "writes.jsonl", det, conf=str(c.conf))
    try:
        run_until_done(parts)
    finally:
        parts.controller.stop()
        parts.journal.close()
    return case / "controller.db"


def one_run(c: SlurmCluster, tmp: Path, i: int, journal: Path) -> dict[str, float]:
    c.reset()
    c.run("scontrol", "create", "reservation", "ReservationName=train", "Nodes=node[1-4]",
          "StartTime=now", "Duration=infinite", "Users=root")
    job = c.sbatch("--requeue", "--open-mode=append", "-N4", "--reservation=train", "-J",
                   "gpt-7b", "-o", "/dev/null", script=JOB)
    c.wait_job_running(job)
    case = tmp / f"run{i}"
    case.mkdir()
    shutil.copy(journal, case / "controller.db")
    det = ScriptedDetector()
    parts = make(config(case), case / "writes.jsonl", det, conf=str(c.conf))
    slurm = c.client()
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            j = slurm.job(job)
            if j is not None and j.running and j.nodes == NEW_SET:
                seen["running"] = time.time()
                return
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t0 = time.time()
    det.push(xid("node3", t0))
    try:
        run_until_done(parts)
    finally:
        stop.set()
        parts.controller.stop()
    poller.join(timeout=5)
    [swap] = parts.journal.actions(action="spare_swap")
    assert swap.state == "verified", swap.error
    ends = {s.name: s.ended_at for s in parts.journal.steps(swap.id)}
    decided = min(d["time"] for d in parts.journal.decisions(swap.incident_id))
    parts.journal.close()
    return {"decide_s": decided - t0, "drained_s": ends["drain"] - t0,
            "moved_s": ends["move"] - t0, "requeued_s": ends["requeue"] - t0,
            "running_s": seen["running"] - t0, "confirmed_s": ends["confirm"] - t0,
            "burnin_s": ends["burnin_release"] - ends["confirm"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # "no agent URL": this job reports no steps
    tmp = Path(tempfile.mkdtemp(prefix="spare-swap-mttr-"))
    runs = []
    with run_slurm(tmp / "slurm") as c:
        journal = template(c, tmp)
        for i in range(args.runs):
            r = one_run(c, tmp, i, journal)
            runs.append(r)
            print(f"run {i}: " + "  ".join(f"{k} {v:6.3f}" for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("median: " + "  ".join(f"{k} {v:6.3f}" for k, v in med.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spare_swap_mttr.json").write_text(json.dumps(
        {"runs": runs, "median": med, "machine": platform.platform()}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
