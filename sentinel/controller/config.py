"""The controller's config: sections ``controller:`` (the daemon), ``policy:`` and ``jobs:``.

``controller:`` and ``policy:`` are flat sections loaded like every other part's
(defaults, file, ``SENTINEL_CONTROLLER_*`` / ``SENTINEL_POLICY_*``, flags). ``jobs:`` is a
list of the training jobs the controller follows, each a mapping checked key by key::

    jobs:
      - name: gpt-7b                      # the job name its Reporter uses
        run_dir: /shared/runs/gpt-7b      # where its checkpoints and rollback requests live
        agent: http://node1:9464          # agent serving its step stream ('' = find it)
        slurm_job: gpt-7b                 # Slurm job id or name ('' = the name above)
        reservation: gpt-7b               # its explicit-node reservation (spare swaps)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sentinel.config import (
    ConfigError,
    config_section,
    load_section,
    register_section,
    split_hostport,
)
from sentinel.rules.rulefile import DEFAULT_CYCLE_S, MAX_INTERVAL_S, MIN_INTERVAL_S

MODES = ("observe", "ask", "act")
SPIKE_CLASSES = ("pending", "recoverable_fast", "recoverable_slow", "diverged", "plateau",
                 "nonfinite")


@config_section("controller")
@dataclass
class ControllerConfig:
    """Settings of ``sentinel controller run``."""

    prometheus_url: str = field(
        default="", metadata={"help": "Prometheus (or compatible) base URL ('' = step streams "
                              "only)"})
    rules: str = field(default="", metadata={"help": "rules YAML ('' = the packaged defaults)"})
    scheduler: str = field(
        default="slurm", metadata={"choices": ("slurm", "none"), "help": "the cluster's "
                                   "scheduler; none: no spare swaps, burn-in on this host only"})
    interval_seconds: float = field(
        default=DEFAULT_CYCLE_S, metadata={
            "help": "seconds per cycle: the series rules, approvals, retries, goodput and "
            "metrics; the systemd watchdog is fed each cycle. 15 s is Prometheus' usual "
            "scrape interval: a shorter cycle sees no new data. Step-stream rules run every "
            "2 s between cycles (a rule's interval: says otherwise)",
            "min": MIN_INTERVAL_S, "max": MAX_INTERVAL_S})
    journal: str = field(default="/var/lib/sentinel/controller.db",
                         metadata={"help": "the SQLite journal (WAL)"})
    listen_address: str = field(
        default="127.0.0.1:9465",
        metadata={"help": "HOST:PORT serving the controller's /metrics ('' = off)"})
    max_concurrent_actions: int = field(
        default=4, metadata={"help": "actions running at once (threads); more wait their turn",
                             "min": 1, "max": 64})
    slurm_timeout_seconds: float = field(
        default=30.0, metadata={"help": "timeout of each scontrol/squeue/sbatch call: slurmctld "
                                "answers in milliseconds; 30 s rides out a busy controller",
                                "min": 1.0})
    slurm_bin_dir: str = field(default="", metadata={"help": "where scontrol/squeue/srun are "
                                                      "('' = PATH)"})
    spare_feature: str = field(
        default="staged", metadata={"help": "Slurm node feature an operator sets on spares whose "
                                    "dataset is staged"})
    spare_partition: str = field(default="", metadata={"help": "partition of the spare pool "
                                                        "('' = any)"})
    burnin_command: list[str] = field(
        default_factory=lambda: ["srun", "--reservation={reservation}", "-w", "{node}", "-N1",
                                 "--exclusive", "--time={minutes}", "sentinel", "burnin",
                                 "--json"],
        metadata={"help": "argv of the burn-in of one node; {node}, {reservation} (the "
                  "maintenance reservation sentinel makes for it), {minutes} are filled in. "
                  "Its stdout must be `sentinel burnin --json` output"})
    burnin_timeout_seconds: float = field(
        default=600.0, metadata={"help": "give up on a burn-in after this long (the default "
                                 "verdict takes ~40 s; a hung GPU must not hold an action)",
                                 "min": 10.0})
    burnin_max_age_hours: float = field(
        default=24.0, metadata={"help": "a spare counts as ready only if it passed a burn-in "
                                "this recently", "min": 0.0})
    requeue_confirm_seconds: float = field(
        default=300.0, metadata={"help": "how long a requeued job may take to run again before "
                                 "the swap counts as failed (queue wait and credential expiry "
                                 "included)", "min": 5.0})
    rollback_answer_seconds: float = field(
        default=300.0, metadata={"help": "how long the job may take to answer a rollback "
                                 "request (a step plus reading a large checkpoint)", "min": 1.0})
    verify_steps: int = field(
        default=200, metadata={"help": "steps after a rollback within which the loss must be "
                               "back on its pre-spike trend (BLOOM's spike took ~200 to heal)",
                               "min": 5})
    verify_timeout_seconds: float = field(
        default=3600.0, metadata={"help": "give up verifying after this long", "min": 1.0})
    approval_timeout_seconds: float = field(
        default=3600.0, metadata={"help": "ask mode: a plan not approved within this expires",
                                  "min": 1.0})
    retention_days: float = field(default=90.0, metadata={"help": "journal retention of closed "
                                                           "incidents and events", "min": 1.0})

    def validate(self) -> None:
        """Check what needs more than a type: the listen address."""
        if self.listen_address:
            split_hostport("controller.listen_address", self.listen_address)


@config_section("policy")
@dataclass
class PolicyConfig:
    """What the controller may do, how often, and how far (section ``policy:``)."""

    rollback_skip_mode: str = field(default="act", metadata={"choices": MODES, "help": "mode of "
                                    "rollback_skip: observe (tell only), ask, act"})
    burnin_mode: str = field(default="act", metadata={"choices": MODES,
                                                      "help": "mode of burn-in of a free node"})
    spare_swap_mode: str = field(default="observe", metadata={"choices": MODES, "help": "mode of "
                                 "spare swaps (drain, swap, requeue): observe until trusted"})
    rollback_on: list[str] = field(
        default_factory=lambda: ["recoverable_slow", "diverged", "plateau", "nonfinite"],
        metadata={"choices": SPIKE_CLASSES, "help": "loss-spike classes worth a rollback; a "
                  "recoverable_fast spike costs fewer steps than a rollback does"})
    max_rollback_steps: int = field(
        default=2000, metadata={"help": "never throw away more steps than this in one rollback "
                                "(hand to a person instead); PaLM went back ~100", "min": 1})
    skip_margin_steps: int = field(
        default=5, metadata={"help": "batches skipped before and after the spike's steps: the "
                             "bad batch may precede the loss jump by a few steps", "min": 0})
    widen_factor: int = field(
        default=4, metadata={"help": "a spike that comes back after a rollback: the second "
                             "rollback skips this many times more batches", "min": 2})
    cooldown_node_seconds: float = field(
        default=3600.0, metadata={"help": "no two actions of a kind on one node within this "
                                  "(outside one incident's escalation)", "min": 0.0})
    cooldown_job_seconds: float = field(
        default=600.0, metadata={"help": "no two actions of a kind on one job within this "
                                 "(outside one incident's escalation)", "min": 0.0})
    max_attempts: int = field(
        default=2, metadata={"help": "attempts of one action per incident before escalating "
                             "(a rollback's second attempt is the wider skip)", "min": 1})
    transient_retries: int = field(
        default=2, metadata={"help": "extra tries of an attempt that failed transiently "
                             "(Slurm timeout, no answer yet)", "min": 0})
    max_drains_per_hour: int = field(
        default=2, metadata={"help": "drains allowed in any hour (OPT-175B lost ~2 machines a "
                             "day on 1,024 GPUs: more in an hour is suspicious)", "min": 0})
    breaker_window_seconds: float = field(
        default=3600.0, metadata={"help": "window of the circuit breaker's drain count",
                                  "min": 60.0})
    breaker_max_fraction: float = field(
        default=0.1, metadata={"help": "trip when drains in the window would exceed this share "
                               "of the nodes (NVSentinel uses 50%; a training cluster cannot "
                               "lose 10% at once)", "min": 0.0, "max": 1.0})
    breaker_max_nodes: int = field(
        default=4, metadata={"help": "... or this many nodes, whichever is smaller", "min": 1})


# ``jobs:`` is a list of JobSpec mappings, read by load_jobs (not one flat section).
register_section("jobs", __name__)


@dataclass
class JobSpec:
    """One training job the controller follows (an entry of ``jobs:``)."""

    name: str = field(default="", metadata={"help": "job name, as its Reporter knows it"})
    run_dir: str = field(default="", metadata={"help": "the job's run directory"})
    checkpoint_dir: str = field(default="", metadata={"help": "('' = RUN_DIR/checkpoints)"})
    agent: str = field(default="", metadata={"help": "agent URL serving its step stream"})
    slurm_job: str = field(default="", metadata={"help": "Slurm job id or name ('' = name)"})
    reservation: str = field(default="", metadata={"help": "the job's explicit-node "
                                                    "reservation ('' = spare swaps refused)"})
    rollback_handler: bool = field(
        default=True, metadata={"help": "the job rolls back in-process when asked; false: "
                                "write the skip plan and requeue it through Slurm"})

    def validate(self) -> None:
        """Require a name."""
        if not self.name.strip():
            raise ConfigError("jobs[].name: missing (valid: the job name its Reporter uses)")


def load_jobs(file_data: dict[str, Any] | None) -> list[JobSpec]:
    """Read the ``jobs:`` list, naming the entry and key of every mistake."""
    raw = (file_data or {}).get("jobs") or []
    if not isinstance(raw, list):
        raise ConfigError(f"jobs: must be a list of mappings, got {type(raw).__name__}")
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"jobs[{i}]"
        if not isinstance(entry, dict):
            keys = ", ".join(f.name for f in dataclasses.fields(JobSpec))
            raise ConfigError(f"{where}: must be a mapping with keys {keys}")
        spec = load_section(JobSpec, where, file_data={where: entry}, env={})
        if spec.name in seen:
            raise ConfigError(f"{where}.name: {spec.name!r} is listed twice (valid: unique)")
        seen.add(spec.name)
        jobs.append(spec)
    return jobs


def mode_of(policy: PolicyConfig, action: str) -> str:
    """Return the configured mode of an action."""
    return str(getattr(policy, f"{action}_mode"))
