"""The ``preflight:`` section, and loading every section of a config file for the checks.

``load_setup`` reads the file once, loads each section the way its part does (so a
key that would stop the agent or the controller at start is found here first) and
collects every section's error instead of stopping at the first. The checks read what
it loaded: the followed job (``jobs:``), the controller's Slurm settings, the agent's
socket and address, and ``preflight:``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.config import (
    ConfigError,
    check_sections,
    config_section,
    known_sections,
    load_section,
    load_yaml,
)
from sentinel.train.checkpoint import DEFAULT_KEEP

# The checks, in the order they run (the config first: the others read it). The
# registry (sentinel/preflight/checks/__init__.py) lists one module for each.
CHECK_NAMES = ("config", "burnin", "checkpoint", "storage", "requeue", "prometheus",
               "reporter", "spare")
# The scrape job the agents are in (deploy/prometheus/prometheus.yml; the alert
# SentinelAgentDown relies on the same name).
AGENT_SCRAPE_JOB = "sentinel-agent"
# Scratch data of the checkpoint round trip: 16 MiB is a few hundred milliseconds on
# any storage a training job checkpoints to, long enough to measure its throughput.
ROUNDTRIP_BYTES = 16 << 20


@config_section("preflight")
@dataclass
class PreflightConfig:
    """Settings of ``sentinel preflight`` (section ``preflight:``)."""

    job: str = field(default="", metadata={"help": "the jobs[] entry to check ('' = the only "
                                           "one)"})
    skip: list[str] = field(default_factory=list, metadata={
        "choices": CHECK_NAMES, "help": "checks never run here (e.g. spare on a cluster "
        "without spares); --only/--skip choose per run"})
    checkpoint_dir: str = field(default="", metadata={
        "help": "the job's checkpoint directory ('' = jobs[].checkpoint_dir, else "
        "RUN_DIR/checkpoints)"})
    checkpoint_bytes: int = field(default=0, metadata={"max": 1 << 50,
        "help": "planned size of one checkpoint ('0' = the newest in the job's store)",
        "min": 0})
    checkpoint_keep: int = field(default=DEFAULT_KEEP, metadata={
        "help": "checkpoints the job keeps (CheckpointStore keep)", "min": 1})
    roundtrip_bytes: int = field(default=ROUNDTRIP_BYTES, metadata={
        "help": "size of the scratch checkpoint saved, verified and loaded",
        "min": 4096, "max": 1 << 34})
    verify_job_checkpoint: bool = field(default=True, metadata={
        "help": "also hash the job's newest checkpoint (its resume point); reads the whole "
        "file"})
    burnin_args: list[str] = field(default_factory=list, metadata={
        "help": "extra arguments of the local `sentinel burnin --json` (e.g. --duration, 10)"})
    burnin_nodes: str = field(default="", metadata={
        "help": "Slurm nodes to burn in through burnin_command, a hostlist ('' = this host "
        "only)"})
    burnin_command: list[str] = field(
        default_factory=lambda: ["srun", "-w", "{node}", "-N1", "--exclusive",
                                 "--time={minutes}", "sentinel", "burnin", "--json"],
        metadata={"help": "argv burning in one Slurm node; {node}, {minutes} and "
                  "{reservation} (the job's) are filled in. Its stdout must be "
                  "`sentinel burnin --json` output"})
    burnin_timeout_seconds: float = field(default=600.0, metadata={
        "help": "give up on a burn-in after this long (the default burn-in takes ~40 s)",
        "min": 10.0})
    partition: str = field(default="", metadata={
        "help": "the job's partition, where the requeue test job runs ('' = Slurm's default)"})
    requeue_sbatch_args: list[str] = field(default_factory=list, metadata={
        "help": "more sbatch options for the requeue test job (account, qos, ...)"})
    requeue_timeout_seconds: float = field(default=180.0, metadata={
        "help": "how long the test job may take to run, and to run again after its requeue "
        "(Slurm holds a requeued job for the credential lifetime, 5 s or more)", "min": 10.0})
    prometheus_url: str = field(default="", metadata={
        "help": "Prometheus that scrapes the agents ('' = controller.prometheus_url)"})
    agent_scrape_job: str = field(default=AGENT_SCRAPE_JOB, metadata={
        "help": "Prometheus scrape job of the agents"})
    agent_socket: str = field(default="", metadata={
        "help": "the local agent's report socket ('' = agent.socket)"})
    agent_url: str = field(default="", metadata={
        "help": "the local agent's HTTP address ('' = from agent.listen_address)"})
    report_timeout_seconds: float = field(default=10.0, metadata={
        "help": "how long a test step report may take to show in the agent's step stream",
        "min": 1.0})


@dataclass
class Setup:
    """Everything the checks read, loaded once."""

    path: str | None
    file_data: dict[str, Any] | None
    errors: dict[str, str] = field(default_factory=dict)   # section -> what is wrong
    loaded: list[str] = field(default_factory=list)        # sections that loaded
    sections: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)         # worth knowing, not errors
    not_checked: dict[str, str] = field(default_factory=dict)  # section -> why not
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    job: Any | None = None                                 # controller JobSpec
    hostname: str = field(default_factory=lambda: socket.gethostname().split(".")[0])

    @property
    def valid(self) -> bool:
        """Whether every section loaded."""
        return not self.errors

    @property
    def controller(self) -> Any:
        """Return the controller: section (ControllerConfig)."""
        return self.sections["controller"]

    def checkpoint_dir(self) -> Path | None:
        """Return the job's checkpoint directory, or None when nothing names one."""
        if self.preflight.checkpoint_dir:
            return Path(self.preflight.checkpoint_dir)
        if self.job is not None and self.job.checkpoint_dir:
            return Path(self.job.checkpoint_dir)
        if self.job is not None and self.job.run_dir:
            rollback = self.sections.get("rollback")
            sub = rollback.checkpoint_subdir if rollback is not None else "checkpoints"
            return Path(self.job.run_dir) / sub
        return None

    def agent_socket(self) -> str:
        """Return the local agent's report socket."""
        return self.preflight.agent_socket or str(self.sections["agent"].socket)

    def agent_url(self) -> str:
        """Return the local agent's HTTP base URL (a wildcard listen address -> loopback)."""
        if self.preflight.agent_url:
            return self.preflight.agent_url.rstrip("/")
        from sentinel.config import split_hostport

        host, port = split_hostport("agent.listen_address",
                                    str(self.sections["agent"].listen_address))
        if host in ("0.0.0.0", ""):  # noqa: S104 - a listen address, not a bind
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def prometheus_url(self) -> str:
        """Return the Prometheus to ask ('' = none configured)."""
        return self.preflight.prometheus_url or str(self.controller.prometheus_url)


# -- every section, loaded as its part loads it ----------------------------------------

def _agent(data: dict[str, Any] | None, _s: Setup) -> Any:
    from sentinel.agent.config import AgentConfig

    return load_section(AgentConfig, "agent", file_data=data)


def _notify(data: dict[str, Any] | None, s: Setup) -> Any:
    from sentinel.notify.config import load_notify_config

    cfg = load_notify_config(data)
    # The secret files live on the controller's host only (one config file serves every
    # node): one that is here is read and judged (mode, size, one word) as the notifier
    # would at start; one that is not is noted.
    for key, path, read in (("slack_token_file", cfg.slack_token_file, cfg.token),
                            ("slack_webhook_url_file", cfg.slack_webhook_url_file,
                             cfg.webhook_url)):
        if path and not os.path.lexists(path):
            s.notes.append(f"notify.{key}: {path} is not on this host (needed where the "
                           "controller runs)")
        elif path:
            read()
    return cfg


def _controller(data: dict[str, Any] | None, s: Setup) -> Any:
    from sentinel.controller.daemon import load_configs

    cfg, policy, jobs = load_configs(data)
    s.sections["policy"], s.sections["jobs"] = policy, jobs
    return cfg


def _rules(_data: dict[str, Any] | None, s: Setup) -> Any:
    from sentinel.rules.rulefile import load_rules

    ctl = s.sections.get("controller")
    if ctl is None:
        raise ConfigError("not checked: controller: does not load (controller.rules)")
    return load_rules(ctl.rules or None)


def _burnin(data: dict[str, Any] | None, _s: Setup) -> Any:
    from sentinel.burnin.config import BurninConfig, BurninConfigError

    try:
        return load_section(BurninConfig, "burnin", file_data=data)
    except BurninConfigError as e:
        raise ConfigError(str(e)) from None


def _rollback(data: dict[str, Any] | None, _s: Setup) -> Any:
    from sentinel.train.cli import RollbackConfig

    return load_section(RollbackConfig, "rollback", file_data=data)


def _dashboards(data: dict[str, Any] | None, _s: Setup) -> Any:
    from sentinel.dashboards.config import DashboardsConfig

    return load_section(DashboardsConfig, "dashboards", file_data=data)


Loader = Callable[[dict[str, Any] | None, Setup], Any]
# (section, loader). "controller" also loads policy: and jobs: (one loader, as the
# controller does); "rules" is the file controller.rules names. A new section of a
# part adds a line here (tests/unit/preflight/test_config.py finds every
# load_section call in sentinel/ and requires its section here).
SECTIONS: list[tuple[str, Loader]] = [
    ("agent", _agent),
    ("notify", _notify),
    ("controller", _controller),
    ("rules", _rules),
    ("burnin", _burnin),
    ("rollback", _rollback),
    ("dashboards", _dashboards),
]


def _read(path: str) -> dict[str, Any]:
    """Parse the file (sections are checked by the caller, one error each)."""
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections "
                          f"(agent:, notify:, ...), got {type(data).__name__}")
    return data


def load_setup(path: str | None, overrides: dict[str, Any] | None = None) -> Setup:
    """Load the file and every section; collect each section's error in ``errors``.

    A file that cannot be read or parsed is an error of section ``file``.
    """
    try:
        data = _read(path) if path else None
    except ConfigError as e:
        return Setup(path, None, errors={"file": str(e)})
    setup = Setup(path, data)
    # Every unknown section is reported, each by name (the parts' declared sections,
    # sentinel.config.known_sections, are the one list of what is valid).
    for key in sorted(set(data or {}) - set(known_sections()), key=str):
        try:
            check_sections({key: None}, f"config file {path}")
        except ConfigError as e:
            setup.errors[str(key)] = str(e)
    for name, loader in SECTIONS:
        try:
            setup.sections[name] = loader(data, setup)
            setup.loaded.append(name)
        except ConfigError as e:
            setup.errors[name] = str(e)
        except OSError as e:  # a rules file or secret that cannot be read
            setup.errors[name] = f"{name}: {e}"
        except ImportError as e:
            # A part whose libraries this host lacks (grafana-client on a GPU node) is
            # not used here: said, not an error.
            setup.not_checked[name] = f"{e.name or e} is not installed"
    try:
        setup.preflight = load_section(PreflightConfig, "preflight", file_data=data,
                                       overrides=overrides)
        setup.loaded.append("preflight")
    except ConfigError as e:
        setup.errors["preflight"] = str(e)
    _choose_job(setup)
    return setup


def _choose_job(setup: Setup) -> None:
    jobs: dict[str, Any] = setup.sections.get("jobs") or {}
    want = setup.preflight.job
    if want:
        if want not in jobs:
            setup.errors["job"] = (f"preflight.job: {want!r} is not in jobs: (valid: "
                                   f"{', '.join(sorted(jobs)) or 'none listed'})")
            return
        setup.job = jobs[want]
    elif len(jobs) == 1:
        setup.job = next(iter(jobs.values()))
    elif len(jobs) > 1:
        setup.errors["job"] = (f"jobs: lists {len(jobs)} jobs: name one with --job or "
                               f"preflight.job (valid: {', '.join(sorted(jobs))})")


# Where Slurm's clients find their config when SLURM_CONF is unset: the usual file, and
# the copy slurmd keeps on a configless cluster.
SLURM_CONF_PATHS = ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")


def slurm_configured_here(bin_dir: str, env: dict[str, str] | None = None) -> str:
    """Return what is missing for Slurm's clients to work here, or '' when nothing is."""
    import shutil

    env = dict(os.environ) if env is None else env
    tool = os.path.join(bin_dir, "sbatch") if bin_dir else shutil.which("sbatch")
    if not tool or not os.access(tool, os.X_OK):
        return "sbatch is not on PATH" if not bin_dir else f"no sbatch in {bin_dir}"
    if not env.get("SLURM_CONF") and not any(os.path.exists(p) for p in SLURM_CONF_PATHS):
        return f"SLURM_CONF is unset and there is no {' or '.join(SLURM_CONF_PATHS)}"
    return ""
