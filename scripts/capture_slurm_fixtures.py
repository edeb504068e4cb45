"""Capture what Slurm 22.05 prints for the controller's reads and errors into test fixtures.

Run as root on a machine with slurm-wlm and munge (Debian 12), from the repository root:
    PYTHONPATH=. python scripts/capture_slurm_fixtures.py tests/fixtures/slurm
It starts the tests' local cluster (tests/support/slurm.py: 5 nodes, node5 `staged`),
puts it through a spare swap by hand and saves, at each point, the exact stdout (and
for errors stderr and exit code) of the commands sentinel/controller/slurm.py runs.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentinel.controller.slurm import JOB_FIELDS
from tests.support.slurm import run_slurm

SQUEUE_FMT = ",".join(f"{f}:|" for f in JOB_FIELDS)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slurm-capture-") as tmp, \
            run_slurm(Path(tmp)) as c:

        def save(name: str, *argv: str) -> subprocess.CompletedProcess:
            r = c.run(*argv, check=False)
            (out / name).write_text(r.stdout)
            return r

        def save_error(name: str, *argv: str, conf: str | None = None) -> None:
            env = dict(c.env, SLURM_CONF=conf) if conf else c.env
            r = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                               timeout=60, check=False)
            (out / name).write_text(json.dumps({"argv": list(argv), "returncode": r.returncode,
                                                "stdout": r.stdout, "stderr": r.stderr},
                                               indent=1) + "\n")

        c.run("scontrol", "create", "reservation", "ReservationName=train", "Nodes=node[1-4]",
              "StartTime=now", "Duration=infinite", "Users=root")
        job = c.sbatch("--requeue", "--open-mode=append", "-N4", "--reservation=train",
                       "-J", "gpt-7b", "-o", f"{tmp}/job.out",
                       script="#!/bin/bash\nsleep 600\n")
        c.sbatch("-N1", "-J", "eval run|2 x=1", "-o", "/dev/null", "--begin=now+1hour",
                 script="#!/bin/bash\nsleep 1\n")
        c.wait_job_running(job)
        c.run("scontrol", "update", "NodeName=node2", "Comment=rack 4 Row=2")
        # node3: sentinel drains it while the job runs (DRAINING); a person drains node5.
        c.run("scontrol", "update", "NodeName=node3", "State=DRAIN",
              "Reason=sentinel: XID 79 (fallen off the bus) on node3 GPU 3 [incident i-0c1d]")
        save("sinfo-running.json", "sinfo", "--json")
        save("squeue-running.txt", "squeue", "-h", "-t", "all", "-j", job, "-O", SQUEUE_FMT)
        save("squeue-by-name.txt", "squeue", "-h", "-t", "all", "-n", "eval run|2 x=1",
             "-O", SQUEUE_FMT)
        c.run("scontrol", "update", "ReservationName=train", "Nodes=node1,node2,node4,node5")
        c.run("scontrol", "requeue", job)
        time.sleep(1)
        save("squeue-requeued.txt", "squeue", "-h", "-t", "all", "-j", job, "-O", SQUEUE_FMT)
        c.wait_job_running(job, timeout=30)
        save("squeue-swapped.txt", "squeue", "-h", "-t", "all", "-j", job, "-O", SQUEUE_FMT)
        c.run("scontrol", "create", "reservation", "ReservationName=sentinel-burnin-node3",
              "Nodes=node3", "StartTime=now", "Duration=infinite", "Users=root",
              "Flags=MAINT,IGNORE_JOBS")
        c.run("scontrol", "update", "NodeName=node3", "State=RESUME")
        c.run("scontrol", "update", "NodeName=node2", "State=DRAIN",
              "Reason=ops: DIMM B2 Replaced=yes, see ticket 4411")
        save("reservations.txt", "scontrol", "-o", "show", "reservation")
        save("reservation-train.txt", "scontrol", "-o", "show", "reservation", "train")
        save("sinfo-burnin.json", "sinfo", "--json")
        c.run("scontrol", "delete", "ReservationName=sentinel-burnin-node3")
        save_error("error-job-invalid.json", "squeue", "-h", "-t", "all", "-j", "99999", "-O",
                   SQUEUE_FMT)
        save_error("error-reservation-missing.json", "scontrol", "-o", "show", "reservation",
                   "nope")
        save_error("error-node-invalid.json", "scontrol", "update", "NodeName=node9",
                   "State=DRAIN", "Reason=x")
        save_error("error-plus-equals.json", "scontrol", "update", "ReservationName=train",
                   "Nodes+=node3")
        save_error("error-requeue-invalid.json", "scontrol", "requeue", "99999")
        save_error("error-resume-idle.json", "scontrol", "update", "NodeName=node4",
                   "State=RESUME")
        save_error("error-delete-missing.json", "scontrol", "delete", "ReservationName=nope")
        dead = Path(tmp) / "dead.conf"
        dead.write_text("\n".join(
            ("SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line)
            for line in c.conf.read_text().splitlines()) + "\n")
        save_error("error-unreachable-squeue.json", "squeue", "-h", "-j", job, "-O", SQUEUE_FMT,
                   conf=str(dead))
        save_error("error-unreachable-sinfo.json", "sinfo", "--json", conf=str(dead))
        c.reset()
        save("reservations-none.txt", "scontrol", "-o", "show", "reservation")
    print(f"wrote {len(list(out.iterdir()))} files to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
