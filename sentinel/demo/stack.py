"""Start and stop everything the demo runs, each process here and stopped by its PID.

The local Slurm cluster (node1-4 in the job's reservation, node5 the staged spare), the
slowed-storage rig, one agent per node (its own socket, port, host name and replayed
GPU), Prometheus scraping them every second with sentinel's recording and alerting
rules (and, when given, Alertmanager), the spare's burn-in, the controller
(``sentinel controller run``, act mode) and the job (the GPT example, one rank per
node, ``sbatch --requeue``). Where Slurm cannot run, the job's ranks are started here
and the controller has no scheduler: spare swaps stay in observe mode (it decides, and
says what it would do). Where the storage rig cannot be made, the job reads its data
from memory and the storage episode is skipped; ``why_no_slurm``/``why_no_storage`` say
why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.demo import story
from sentinel.demo.storage import SlowStorage, unavailable
from sentinel.gpu.nvml_replay import H100_LOAD
from sentinel.localstack.procs import Unavailable, free_port, log_tail, stop, wait_http
from sentinel.localstack.prometheus import (
    Alertmanager,
    Prometheus,
    run_alertmanager,
    run_prometheus,
)
from sentinel.localstack.slurm import SlurmCluster, need_slurm, run_slurm

log = logging.getLogger(__name__)

RECORDING_RULES = Path(__file__).resolve().parents[1] / "rules" / "prometheus.rules.yml"
CORPUS = "corpus.bin"
# Seconds a started process gets to answer on its port.
START_TIMEOUT_S = 30.0


@dataclass
class AgentProc:
    """One node's agent."""

    node: str
    url: str
    hostport: str
    socket: Path
    replay: Path
    textfile_dir: Path
    proc: subprocess.Popen[Any]


@dataclass
class Options:
    """What to run, and where."""

    root: Path
    slack_env: bool = False           # Slack credentials are in the environment: post for real
    alertmanager_config: Path | None = None
    try_slurm: bool = True
    try_storage: bool = True
    max_steps: int = story.MAX_STEPS
    python: str = sys.executable


@dataclass
class Stack:
    """The running parts, started by :meth:`start` and stopped by :meth:`close`."""

    opts: Options
    slurm: SlurmCluster | None = None
    why_no_slurm: str = ""
    storage: SlowStorage | None = None
    why_no_storage: str = ""
    agents: dict[str, AgentProc] = field(default_factory=dict)
    prometheus: Prometheus | None = None
    alertmanager: Alertmanager | None = None
    controller: subprocess.Popen[Any] | None = None
    controller_url: str = ""
    slurm_job: str = ""
    local_ranks: list[subprocess.Popen[Any]] = field(default_factory=list)
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # -- paths -------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """Return the run's directory."""
        return self.opts.root

    @property
    def run_dir(self) -> Path:
        """Return the job's run directory (checkpoints, logs, rollback requests)."""
        return self.root / "run"

    @property
    def config_path(self) -> Path:
        """Return the controller's config file."""
        return self.root / "controller" / "sentinel.yml"

    @property
    def journal_path(self) -> Path:
        """Return the controller's journal."""
        return self.root / "controller" / "controller.db"

    @property
    def outbox_dir(self) -> Path:
        """Return the notify outbox (what Slack got, or would have)."""
        return self.root / "controller" / "outbox"

    @property
    def record_dir(self) -> Path:
        """Return where the messages go without Slack credentials."""
        return self.root / "controller" / "slack"

    def nodes(self) -> list[str]:
        """Return every node: the job's and the spare."""
        return [*story.NODES, story.SPARE]

    # -- start -------------------------------------------------------------------------

    def start_infra(self) -> None:
        """Start Slurm, the storage rig, the agents and Prometheus (each says if it cannot)."""
        self.root.mkdir(parents=True, exist_ok=True)
        # The storage first: it is torn down last, once the job (Slurm's) has stopped and
        # no longer holds its files.
        self._storage()
        self._slurm()
        for node in self.nodes():
            self.agents[node] = self._agent(node)
        self._prometheus()

    def _slurm(self) -> None:
        if not self.opts.try_slurm:
            self.why_no_slurm = "turned off (--no-slurm)"
            return
        try:
            need_slurm()
        except Unavailable as e:
            self.why_no_slurm = str(e)
            return
        self.slurm = self._exit.enter_context(
            run_slurm(self.root / "slurm", len(self.nodes()),
                      features={story.SPARE: story.SPARE_FEATURE}))

    def _storage(self) -> None:
        why = "turned off (--no-storage)" if not self.opts.try_storage else unavailable()
        if why:
            self.why_no_storage = why
            return
        from sentinel.examples.gpt import write_data

        storage = SlowStorage(self.root / "storage", self.nodes())
        self._exit.callback(storage.teardown)
        try:
            storage.setup(4 << 20, lambda d: write_data(d / CORPUS, "tiny"))
        except OSError as e:
            self.why_no_storage = f"the loop devices could not be set up: {e}"
            return
        self.storage = storage

    def _agent(self, node: str) -> AgentProc:
        d = self.root / "nodes" / node
        (d / "textfile").mkdir(parents=True, exist_ok=True)
        replay = d / "gpu-replay.json"
        dump = json.loads(H100_LOAD.read_text())
        for i, dev in enumerate(dump["devices"]):  # a GPU UUID of its own per node
            dev["uuid"] = f"{dev['uuid'][:-len(node) - 2]}{node}{i:x}"
        replay.write_text(json.dumps(dump))
        port = free_port()
        agent_cfg: dict[str, Any] = {
            "listen_address": f"127.0.0.1:{port}", "socket": str(d / "agent.sock"),
            "socket_mode": "0666", "hostname": node, "gpu_replay": str(replay),
            "textfile_dir": str(d / "textfile"), "filesystem_paths": [str(self.root)],
            "rate_window_seconds": story.AGENT_RATE_WINDOW_S}
        if self.storage is not None:
            # This node's data device only: the machine's own disks (busy with whatever
            # else runs here) are not this node's story.
            dev = self.storage.device_names()[node]
            agent_cfg["disk_exclude"] = rf"^(?!{dev}$).*$"
        (d / "agent.yml").write_text(yaml.safe_dump({"agent": agent_cfg}))
        log_path = d / "agent.log"
        out = self._exit.enter_context(open(log_path, "ab"))
        proc = subprocess.Popen([self.opts.python, "-m", "sentinel", "agent", "--config",
                                 str(d / "agent.yml")], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._exit.callback(stop, proc)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", timeout=START_TIMEOUT_S, proc=proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"agent of {node} did not start: {e}\n{log_tail(log_path)}") \
                from e
        return AgentProc(node, url, f"127.0.0.1:{port}", d / "agent.sock", replay,
                         d / "textfile", proc)

    def _prometheus(self) -> None:
        if self.opts.alertmanager_config is not None:
            self.alertmanager = self._exit.enter_context(
                run_alertmanager(self.root / "alertmanager", self.opts.alertmanager_config))
        self.controller_url = f"127.0.0.1:{free_port()}"
        scrape = {"job_name": "sentinel-controller",
                  "static_configs": [{"targets": [self.controller_url]}]}
        self.prometheus = self._exit.enter_context(run_prometheus(
            self.root / "prometheus", [a.hostport for a in self.agents.values()],
            scrape_interval=story.SCRAPE_INTERVAL, rule_files=[str(RECORDING_RULES)],
            honor_labels=True, more_scrape_configs=[scrape],
            alertmanager=self.alertmanager.hostport if self.alertmanager else None))

    def burn_in_spare(self) -> str:
        """Run the spare's burn-in on it (through Slurm) for its agent to export; say how."""
        textfile = self.agents[story.SPARE].textfile_dir / "burnin.prom"
        argv = [self.opts.python, "-m", "sentinel.burnin.replay", "pass", "--textfile",
                str(textfile), "--hostname", story.SPARE]
        if self.slurm is not None:
            r = self.slurm.run("srun", "-N1", "-w", story.SPARE, *argv, check=False,
                               timeout=120)
        else:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"the spare's burn-in failed ({r.returncode}): "
                               f"{r.stderr.strip()[-2000:]}")
        return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "burned in"

    def write_controller_config(self) -> dict[str, Any]:
        """Write the controller's config file (act mode; observe for swaps without Slurm)."""
        d = self.root / "controller"
        d.mkdir(parents=True, exist_ok=True)
        (d / "rules.yml").write_text(yaml.safe_dump(story.demo_rules(), sort_keys=False))
        assert self.prometheus is not None
        ctl: dict[str, Any] = {
            "journal": str(self.journal_path), "prometheus_url": self.prometheus.url,
            "rules": str(d / "rules.yml"), "interval_seconds": story.CONTROLLER_INTERVAL_S,
            "listen_address": self.controller_url,
            "scheduler": "slurm" if self.slurm is not None else "none",
            "spare_feature": story.SPARE_FEATURE,
            "burnin_command": ["srun", "--reservation={reservation}", "-w", "{node}", "-N1",
                               "--exclusive", "--time={minutes}", self.opts.python, "-m",
                               "sentinel.burnin.replay", "fail"],
            "burnin_timeout_seconds": 60, "requeue_confirm_seconds": 120,
            "rollback_answer_seconds": 60, "verify_steps": 150,
            "verify_timeout_seconds": 120}
        job: dict[str, Any] = {"name": story.JOB, "run_dir": str(self.run_dir),
                               "agent": self.agents[story.NODES[0]].url}
        if self.slurm is not None:
            job.update(slurm_job=story.JOB, reservation=story.RESERVATION)
        notify: dict[str, Any] = {"queue_dir": str(self.outbox_dir), "rate_per_minute": 120,
                                  "rate_burst": 40}
        if not self.opts.slack_env:
            notify["record_dir"] = str(self.record_dir)
        data = {"controller": ctl,
                "policy": {"rollback_skip_mode": "act", "burnin_mode": "act",
                           "spare_swap_mode": "act" if self.slurm is not None else "observe"},
                "jobs": [job], "notify": notify}
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        return data

    def start_controller(self) -> None:
        """Run ``sentinel controller run`` with the config; wait for its /healthz."""
        self.write_controller_config()
        env = dict(os.environ)
        if self.slurm is not None:
            env["SLURM_CONF"] = str(self.slurm.conf)
        log_path = self.root / "controller" / "controller.log"
        out = self._exit.enter_context(open(log_path, "ab"))
        self.controller = subprocess.Popen(
            [self.opts.python, "-m", "sentinel", "--log-level", "info", "controller", "run",
             "--config", str(self.config_path)], stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        self._exit.callback(self.stop_controller)
        try:
            wait_http(f"http://{self.controller_url}/metrics", timeout=START_TIMEOUT_S,
                      proc=self.controller)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"the controller did not start: {e}\n{log_tail(log_path)}") \
                from e

    def stop_controller(self) -> None:
        """Stop the controller (it journals what it was doing; nothing is lost)."""
        if self.controller is not None:
            stop(self.controller, timeout=30)

    # -- the job -----------------------------------------------------------------------

    def gpt_args(self) -> list[str]:
        """Return the GPT example's flags (the data file is added per node)."""
        return ["--config", "tiny", "--job", story.JOB, "--run-dir", str(self.run_dir),
                "--max-steps", str(self.opts.max_steps), "--seed", str(story.SEED),
                "--checkpoint-every", str(story.CHECKPOINT_EVERY), "--keep", "6",
                "--eval-every", "100000", "--threads", "1",
                "--min-step-seconds", str(story.STEP_SECONDS),
                "--inject-bad-batch", story.bad_batches_arg()]

    def data_file(self, node: str) -> Path | None:
        """Return where ``node``'s rank reads its batches (None: from memory)."""
        return self.storage.data_dir(node) / CORPUS if self.storage is not None else None

    def submit_job(self) -> str:
        """Start the job: ``sbatch --requeue`` in the reservation, or local ranks."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.slurm is None:
            self._start_local_ranks()
            return f"{len(self.local_ranks)} local processes"
        s = self.slurm
        s.run("scontrol", "create", "reservation", f"ReservationName={story.RESERVATION}",
              f"Nodes={','.join(story.NODES)}", "StartTime=now", "Duration=infinite",
              "Users=root")
        self.slurm_job = s.sbatch("--requeue", "--open-mode=append", f"-N{len(story.NODES)}",
                                  "--ntasks-per-node=1", f"--reservation={story.RESERVATION}",
                                  "-J", story.JOB, "-o", str(self.run_dir / "slurm-%j.out"),
                                  script=self.job_script())
        self._exit.callback(self.cancel_job)
        return f"Slurm job {self.slurm_job}"

    def cancel_job(self) -> None:
        """Cancel the job and wait until it is gone.

        Before the daemons stop: a job whose slurmd goes first leaves steps retrying to
        report for a minute.
        """
        if self.slurm is None or not self.slurm_job:
            return
        if self.job_state()[0] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            self.slurm.run("scancel", self.slurm_job, check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.job_state()[0] in (
                "PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            time.sleep(0.5)

    def job_script(self) -> str:
        """Return the batch script: one rank per node, each to its node's agent and data."""
        ports = " ".join(str(free_port()) for _ in range(4))
        data = (f" --data-file {self.storage.root}/nodes/$SLURMD_NODENAME/{CORPUS}"
                if self.storage is not None else "")
        rank = (f"export SENTINEL_AGENT_SOCKET={self.root}/nodes/$SLURMD_NODENAME/agent.sock; "
                f"exec {self.opts.python} -m sentinel.examples.gpt "
                f"{' '.join(self.gpt_args())}{data}")
        return f"""#!/bin/bash
# sentinel demo: the GPT example, one rank per node; each rank reports to its node's agent
# and reads its node's copy of the data. A requeued run takes the next rendezvous port.
ports=({ports})
# The ranks run the sentinel this demo runs (a checkout on PYTHONPATH, or the installed one).
export PYTHONPATH={_package_root()}${{PYTHONPATH:+:$PYTHONPATH}}
export MASTER_ADDR=127.0.0.1
export MASTER_PORT=${{ports[$(( ${{SLURM_RESTART_COUNT:-0}} % 4 ))]}}
echo "start $(date +%s.%N) restarts=${{SLURM_RESTART_COUNT:-0}} nodes=$SLURM_JOB_NODELIST"
exec srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '{rank}'
"""

    def _start_local_ranks(self) -> None:
        port = str(free_port())
        log_dir = self.run_dir / "ranks"
        log_dir.mkdir(parents=True, exist_ok=True)
        for rank, node in enumerate(story.NODES):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(len(story.NODES)),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       SENTINEL_AGENT_SOCKET=str(self.agents[node].socket))
            data = self.data_file(node)
            argv = [self.opts.python, "-m", "sentinel.examples.gpt", *self.gpt_args(),
                    *(["--data-file", str(data)] if data else [])]
            out = self._exit.enter_context(open(log_dir / f"{node}.log", "ab"))
            p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            self._exit.callback(stop, p)
            self.local_ranks.append(p)

    def job_state(self) -> tuple[str, list[str], int]:
        """Return the job's state, its nodes and its restart count."""
        if self.slurm is None:
            codes = [p.poll() for p in self.local_ranks]
            if any(c is None for c in codes):
                return "RUNNING", list(story.NODES), 0
            return ("COMPLETED" if all(c == 0 for c in codes) else "FAILED"), [], 0
        fields = self.slurm.run("squeue", "-h", "-t", "all", "-j", self.slurm_job, "-O",
                                "State:|,RestartCnt:|,NodeList:", check=False).stdout.strip()
        if not fields:
            return "GONE", [], 0
        state, restarts, nodelist = (fields.split("|") + ["", "", ""])[:3]
        nodes = self.slurm.run("scontrol", "show", "hostnames", nodelist.strip(),
                               check=False).stdout.split() if nodelist.strip() else []
        return state.strip(), nodes, int(restarts.strip() or 0)

    def close(self) -> None:
        """Stop everything that was started, newest first."""
        self._exit.close()


def _package_root() -> str:
    """Return the folder that holds the ``sentinel`` package this process imported."""
    return str(Path(__file__).resolve().parents[2])


def wait_for(what: str, cond: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll ``cond()`` until truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
