"""A real Slurm cluster on 127.0.0.1: munged, slurmctld and N slurmd in a directory of its own.

For ``sentinel demo`` and the tests. Recipe from /work/shared/LOCAL-STACK.md, with what
lets several clusters run side by side (tests and demos start their own at the same time):

- its own munged on a private socket (``AuthInfo=socket=...``), so no cluster depends on
  or stops another's munged;
- free ports: ``SlurmctldPort`` and one ``Port`` per node (a ``NodeName`` line each);
- ``AuthInfo=cred_expire=5`` (a requeued job waits for the old credential to expire;
  Slurm's minimum is 5 s) and a fresh StateSaveLocation with ``slurmctld -i``.

Every process is started here and stopped by its PID; processes the daemons left (a
job's slurmstepd and its script) are found by their working directory inside the
cluster's directory and stopped too. :func:`need_slurm` raises
:class:`~sentinel.localstack.procs.Unavailable` saying what is missing (a tool, the munge
key, root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.localstack.procs import Unavailable, free_ports, log_tail, wait_until

INSTALL = "apt-get install slurm-wlm munge"
MUNGE_KEY = Path("/etc/munge/munge.key")
# Node features: node5 is the staged spare (controller.spare_feature's default, `staged`).
DEFAULT_FEATURES = {"node5": "staged"}


def need_slurm() -> dict[str, str]:
    """Return the paths of the Slurm and munge tools, or raise Unavailable saying why not."""
    found: dict[str, str] = {}
    for name in ("slurmctld", "slurmd", "munged", "scontrol", "sbatch", "srun"):
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(
            f"/usr/sbin/{name}") else None)
        if path is None:
            raise Unavailable(f"{name} not found: install Slurm and munge ({INSTALL})")
        found[name] = path
    if not MUNGE_KEY.exists():
        raise Unavailable(f"{MUNGE_KEY} missing: reinstall munge ({INSTALL}) or run mungekey")
    if os.geteuid() != 0:
        raise Unavailable("a local Slurm cluster runs slurmd as root: run as root")
    return found


def _wait(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    wait_until(pred, timeout, what, interval)


@dataclass
class SlurmCluster:
    """A running local cluster and helpers to drive and inspect it."""

    dir: Path
    conf: Path
    nodes: list[str]
    partition: str
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    munge_dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """Return an environment in which Slurm commands talk to this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0
            ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this cluster."""
        r = subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): "
                               f"{r.stderr.strip() or r.stdout.strip()}")
        return r

    def node_states(self) -> dict[str, str]:
        """Return ``{node: 'IDLE+DRAIN'}`` from scontrol."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N|%T").stdout
        return dict(line.split("|", 1) for line in out.split())

    def sbatch(self, *args: str, script: str) -> str:
        """Submit a batch script; return the job id."""
        path = self.dir / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        out = self.run("sbatch", "--parsable", f"--chdir={self.dir}", *args, str(path)).stdout
        return out.strip().split(";")[0]

    def job_field(self, job: str, fmt: str) -> str:
        """Return one squeue -O field of a job ('' when the job is gone)."""
        r = self.run("squeue", "-h", "-t", "all", "-j", job, "-O", f"{fmt}:|", check=False)
        return r.stdout.strip().rstrip("|") if r.returncode == 0 else ""

    def wait_job_running(self, job: str, timeout: float = 30.0) -> None:
        """Wait until a job runs."""
        _wait(lambda: self.job_field(job, "State") == "RUNNING", timeout, f"job {job} running")

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until every node is idle and nothing else."""
        seen: dict[str, str] = {}

        def idle() -> bool:
            ctl = self.procs.get("slurmctld")
            if ctl is not None and ctl.poll() is not None:
                raise RuntimeError(f"slurmctld exited with {ctl.returncode}")
            try:
                seen.update(self.node_states())
            except RuntimeError:
                return False  # slurmctld not answering yet
            return set(seen.values()) == {"idle"}

        try:
            _wait(idle, timeout, "all nodes idle")
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {seen}") from e

    def reset(self) -> None:
        """Bring the cluster back to all nodes idle: no job, no reservation, nothing drained."""
        ids = self.run("squeue", "-h", "-o", "%i").stdout.split()
        if ids:
            self.run("scancel", *ids, check=False)
            _wait(lambda: not self.run("squeue", "-h", "-o", "%i").stdout.split(), 30,
                  "every job gone")
        out = self.run("scontrol", "-o", "show", "reservation").stdout
        for line in out.splitlines():
            if line.startswith("ReservationName="):
                name = line.split()[0].split("=", 1)[1]
                self.run("scontrol", "delete", f"ReservationName={name}")
        for node, state in self.node_states().items():
            if state != "idle":
                self.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        self.wait_idle()

    def stop(self) -> None:
        """Stop jobs, slurmd, slurmctld and munged we started, then what they left behind."""
        with contextlib.suppress(Exception):
            ids = self.run("squeue", "-h", "-o", "%i", timeout=5).stdout.split()
            if ids:
                self.run("scancel", *ids, check=False, timeout=5)
        order = [k for k in self.procs if k.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _kill_left_behind(self.dir, self.conf)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


def _kill_left_behind(root: Path, conf: Path) -> None:
    """SIGKILL what our daemons left: a job's slurmstepd and script outlive slurmd.

    They are ours when they run inside the cluster's directory (the daemons start there)
    or carry its ``SLURM_CONF`` in their environment.
    """
    root_s = str(root.resolve())
    mark = f"SLURM_CONF={conf}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd == root_s or cwd.startswith(root_s + "/") or mark in env:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def _write_conf(d: Path, nodes: list[str], partition: str, features: dict[str, str],
                munge_socket: Path, partitions: dict[str, list[str]],
                extra: list[str]) -> Path:
    host = socket.gethostname().split(".")[0]
    ctl_port, *node_ports = free_ports(len(nodes) + 1)
    lines = [
        "ClusterName=sentineltest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctl_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire=5: a requeued job waits for its old credential to expire (min 5 s).
        f"AuthInfo=cred_expire=5,socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_interval=1",
        "MpiDefault=none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "KillWait=2",
        f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool/%n",
        f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmctldLogFile={d}/slurmctld.log",
        f"SlurmdPidFile={d}/slurmd-%n.pid",
        f"SlurmdLogFile={d}/slurmd-%n.log",
        *extra,
    ]
    for node, port in zip(nodes, node_ports, strict=True):
        feat = f" Feature={features[node]}" if node in features else ""
        lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                     f"CPUs=1 RealMemory=1000{feat}")
    lines.append(f"PartitionName={partition} Nodes={','.join(nodes)} Default=YES State=UP "
                 "MaxTime=INFINITE")
    for name, members in partitions.items():
        lines.append(f"PartitionName={name} Nodes={','.join(members)} State=UP MaxTime=INFINITE")
    conf = d / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _start_munged(munged: str) -> tuple[subprocess.Popen[Any], Path]:
    import pwd

    # The socket's directory must be reachable by the munge user from /: not under
    # pytest's 0700 temp root.
    mdir = Path(tempfile.mkdtemp(prefix="sentinel-munge-"))
    pw = pwd.getpwnam("munge")
    os.chown(mdir, pw.pw_uid, pw.pw_gid)
    mdir.chmod(0o711)
    sock = mdir / "munge.socket"
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            munged, "-F", f"--socket={sock}", f"--pid-file={mdir}/munged.pid",
            f"--seed-file={mdir}/munged.seed", f"--log-file={mdir}/munged.log",
            f"--key-file={MUNGE_KEY}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait(lambda: sock.exists() or proc.poll() is not None, 10, "munged socket")
    except TimeoutError:
        proc.kill()
        raise
    if proc.poll() is not None:
        log = (mdir / "munged.log").read_text() if (mdir / "munged.log").exists() else ""
        raise RuntimeError(f"munged exited with {proc.returncode}: {log[-2000:]}")
    return proc, mdir


@contextlib.contextmanager
def run_slurm(tmp: Path, n_nodes: int = 5, *, partition: str = "gpu",
              features: dict[str, str] | None = None,
              partitions: dict[str, list[str]] | None = None,
              extra_conf: list[str] | None = None) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and ``n_nodes`` slurmd (node1..N); stop them all at the end.

    Every node is in ``partition`` (the default one); ``partitions`` adds more;
    ``extra_conf`` lines (``HealthCheckProgram=...``) go before the node lines.
    """
    bins = need_slurm()
    tmp.mkdir(parents=True, exist_ok=True)
    nodes = [f"node{i}" for i in range(1, n_nodes + 1)]
    munged, mdir = _start_munged(bins["munged"])
    (tmp / "state").mkdir(exist_ok=True)
    for n in nodes:
        (tmp / "spool" / n).mkdir(parents=True, exist_ok=True)
    conf = _write_conf(tmp, nodes, partition, DEFAULT_FEATURES if features is None else features,
                       mdir / "munge.socket", partitions or {}, extra_conf or [])
    cluster = SlurmCluster(dir=tmp, conf=conf, nodes=nodes, partition=partition,
                           procs={"munged": munged}, munge_dir=mdir)
    env = cluster.env
    logs = open(tmp / "daemons.out", "ab")  # noqa: SIM115 - closed below
    try:
        cluster.procs["slurmctld"] = subprocess.Popen(
            [bins["slurmctld"], "-D", "-i"], env=env, cwd=tmp, stdout=logs,
            stderr=subprocess.STDOUT, start_new_session=True)
        for n in nodes:
            cluster.procs[f"slurmd-{n}"] = subprocess.Popen(
                [bins["slurmd"], "-D", "-N", n], env=env, cwd=tmp, stdout=logs,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            cluster.wait_idle(timeout=30)
        except Exception as e:
            raise RuntimeError(f"local Slurm did not come up: {e}\n"
                               f"{log_tail(tmp / 'slurmctld.log')}") from e
        yield cluster
    finally:
        cluster.stop()
        logs.close()
