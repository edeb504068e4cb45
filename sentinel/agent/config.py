"""The agent's configuration section (``agent:`` in the YAML file)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sentinel.agent.ring import MAX_RING_BYTES, RECORD_BYTES
from sentinel.agent.senders import SenderPolicy, resolve_group
from sentinel.config import ConfigError, config_section, split_hostport

if TYPE_CHECKING:
    from sentinel.agent.collectors.base import Collector

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9464"
DEFAULT_SOCKET = "/run/sentinel/agent.sock"
# The group whose members may write to the report socket (mode 0660), when it exists.
DEFAULT_SOCKET_GROUP = "sentinel"
# node_exporter's default device exclusion: RAM disks, loops, floppies and partitions
# (sda1, nvme0n1p1, ...), which would double-count their parent disk's I/O.
DEFAULT_DISK_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"


def registered_collectors() -> list[type[Collector]]:
    """Return the collector classes of ``sentinel/agent/collectors/__init__.py``, in order."""
    # Imported when called, not with this module: the collectors import this module's
    # users, and `import sentinel.agent.config` stays free of them.
    from sentinel.agent.collectors import COLLECTORS  # noqa: PLC0415

    return list(COLLECTORS)


def default_collectors() -> list[str]:
    """Return the names of the collectors that declare themselves on by default."""
    return [c.name for c in registered_collectors() if c.default_enabled]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: where it points can change


def parse_mode(key: str, value: str) -> int:
    """Return the permission bits an octal string like '0660' names, or raise ConfigError."""
    if not re.fullmatch(r"0?[0-7]{3}", value.strip()):
        raise ConfigError(f"{key}: {value!r} is not an octal file mode (valid: e.g. '0660', "
                          "or '0666' to let every local user write to the socket)")
    return int(value, 8)


@config_section("agent")
@dataclass
class AgentConfig:
    """Settings of ``sentinel agent``; every one can also be a flag or SENTINEL_AGENT_*."""

    listen_address: str = field(
        default=DEFAULT_LISTEN_ADDRESS, metadata={"help": "HOST:PORT serving /metrics"}
    )
    socket: str = field(
        default=DEFAULT_SOCKET,
        metadata={"help": "Unix datagram socket training processes report to ('' = off)"},
    )
    # Group-writable only: the group (the unit's Group=sentinel) names who may report.
    socket_mode: str = field(
        default="0660",
        metadata={"help": "permissions of the report socket, octal; '0666' lets every local "
                  "user write to it (reports are still checked by uid)"},
    )
    socket_group: str = field(
        default="",
        metadata={"help": "group of the report socket, a name or gid ('' = the group "
                  f"'{DEFAULT_SOCKET_GROUP}' when it exists and the agent may use it, else the "
                  f"agent's own; the systemd unit runs the agent as Group={DEFAULT_SOCKET_GROUP})"},
    )
    report_allow_uids: list[int] = field(
        default_factory=list,
        metadata={"help": "uids that may report on the socket; with report_allow_groups "
                  "both empty, any uid that can write to the socket may"},
    )
    report_allow_groups: list[str] = field(
        default_factory=list,
        metadata={"help": "groups (names or gids) whose members may report on the socket"},
    )
    # One user filling every job slot must not keep another's job out; 8 still fits a
    # sweep of one single-GPU job per GPU of an 8-GPU node.
    max_jobs_per_uid: int = field(
        default=8,
        metadata={"help": "jobs one uid may have at once (all UDP senders count as one)",
                  "min": 1, "max": 1024},
    )
    udp_address: str = field(
        default="",
        metadata={"help": "HOST:PORT of the UDP fallback for step reports ('' = off); "
                  "UDP reports carry no credentials: a loopback address unless "
                  "udp_allow_remote"},
    )
    udp_allow_remote: bool = field(
        default=False,
        metadata={"help": "allow a udp_address that is not loopback (any host that reaches "
                  "it can then report, for jobs that were not started over the socket)"},
    )
    # Names and defaults come from the collectors themselves (collectors/__init__.py);
    # validate() checks the names against that list.
    collectors: list[str] = field(
        default_factory=default_collectors,
        metadata={"help": "collectors to run (the names of the --collector.NAME flags)"},
    )
    hostname: str = field(
        default="", metadata={"help": "value of the hostname label ('' = this machine's name)"}
    )
    procfs: str = field(default="/proc", metadata={"help": "root of procfs (tests: fixtures)"})
    textfile_dir: str = field(
        default="",
        metadata={"help": "directory of *.prom files to export (burn-in results); '' = off"},
    )
    gpu_replay: str = field(
        default="", metadata={"help": "serve GPU series from a captured NVML dump (no GPU)"}
    )
    gpu_slow_fields_seconds: float = field(
        default=30.0,
        metadata={
            "min": 0.0,
            "help": "refresh the expensive NVML fields (energy, violation counters, PCIe "
            "replays, max clock, temperature thresholds) at most this often; 0 = every "
            "scrape. 30 s is dcgm-exporter's default interval; on an H100 these calls cost "
            "0.4-2.4 ms each (bench/nvml_calls.py) against ~2 us for the rest",
        },
    )
    disk_exclude: str = field(
        default=DEFAULT_DISK_EXCLUDE,
        metadata={"help": "regex of /proc/diskstats device names to skip"},
    )
    filesystem_paths: list[str] = field(
        default_factory=lambda: ["/"],
        metadata={"help": "paths whose filesystem free space is exported (checkpoints, data)"},
    )
    # A step ring of 20000 records is ~3 MB per job and covers hours of steps at 1 Hz,
    # more than any detector window the rules engine asks for.
    step_ring_size: int = field(
        default=20000, metadata={"help": "step records kept per job", "min": 10, "max": 1_000_000}
    )
    # One node runs a handful of jobs; the cap bounds memory against a runaway sender.
    max_jobs: int = field(
        default=16, metadata={"help": "jobs tracked at once", "min": 1, "max": 1024}
    )
    # 8 GPUs a node is usual; 64 leaves room for CPU-side ranks without letting a
    # buggy sender create unbounded series.
    max_ranks_per_job: int = field(
        default=64, metadata={"help": "ranks tracked per job", "min": 1, "max": 4096}
    )
    # 30 s smooths per-step jitter yet shows a throughput drop within one scrape or two.
    rate_window_seconds: float = field(
        default=30.0,
        metadata={"help": "window for tokens/sec", "min": 1.0, "max": 3600.0},
    )
    # A job silent for an hour has ended or hung. Long enough that a hang stays visible
    # (SentinelJobStoppedReporting fires at 5 minutes and stays red until expiry), short
    # enough that finished jobs' series go; max_jobs bounds the series count regardless.
    job_expiry_seconds: float = field(
        default=3600.0,
        metadata={"help": "forget a job after this long without reports", "min": 5.0},
    )
    # 4 MiB holds ~25k step datagrams: seconds of backlog even with many ranks.
    socket_rcvbuf_bytes: int = field(
        default=4 << 20,
        metadata={"help": "SO_RCVBUF of the report sockets", "min": 65536, "max": 1 << 30},
    )
    # systemd's WatchdogSec is 30 s; notifying every 5 s leaves room for a slow scrape.
    watchdog_interval_seconds: float = field(
        default=5.0, metadata={"help": "how often the main loop checks health", "min": 0.1}
    )
    # Prometheus's default scrape_timeout is 10 s: at 5 s a scrape with a hung collector
    # still returns, with the other collectors' data, well inside it. A healthy collect
    # takes milliseconds (eight H100s: ~2 ms), so 5 s is only ever missed by a hang.
    collector_timeout_seconds: float = field(
        default=5.0,
        metadata={"help": "a collector that has not returned within this is left out of "
                  "the scrape (success 0); below Prometheus's scrape_timeout (10 s by "
                  "default) so the other collectors' data still arrives",
                  "min": 0.01, "max": 300.0},
    )
    # An NVML call stuck for 20 s is a hung driver: stop feeding the watchdog.
    collect_stall_seconds: float = field(
        default=20.0,
        metadata={"help": "a collect running longer than this makes the agent unhealthy",
                  "min": 1.0},
    )
    # Few scrapers exist (Prometheus, the controller, a person); connections cost no
    # thread (sentinel/httpserve.py), so the cap leaves room for 52 slow clients at once
    # (issue 13's probe) and past it the connection stalled longest is closed.
    max_http_connections: int = field(
        default=64, metadata={"help": "HTTP connections open at once", "min": 1, "max": 1024}
    )

    def validate(self) -> None:
        """Check the values that need more than a type: names, addresses and the regex."""
        known = [c.name for c in registered_collectors()]
        for name in self.collectors:
            if name not in known:
                raise ConfigError(f"agent.collectors: {name!r} is not valid "
                                  f"(valid: {', '.join(known)})")
        split_hostport("agent.listen_address", self.listen_address)
        if self.udp_address:
            host, _ = split_hostport("agent.udp_address", self.udp_address)
            if not self.udp_allow_remote and not _is_loopback(host):
                raise ConfigError(
                    f"agent.udp_address: {self.udp_address!r} is not a loopback address, and "
                    "UDP reports carry no credentials: any host reaching it could report "
                    "(valid: 127.0.0.1:PORT, [::1]:PORT or localhost:PORT; or set "
                    "agent.udp_allow_remote: true to take reports from the network)")
        parse_mode("agent.socket_mode", self.socket_mode)
        if self.socket_group:
            resolve_group("agent.socket_group", self.socket_group)
        SenderPolicy.from_config(self.report_allow_uids, self.report_allow_groups)
        ring = self.step_ring_size * self.max_jobs * RECORD_BYTES
        if ring > MAX_RING_BYTES:
            raise ConfigError(
                f"agent.step_ring_size x agent.max_jobs: {self.step_ring_size} x "
                f"{self.max_jobs} records of {RECORD_BYTES} bytes take {ring >> 20} MiB, more "
                f"than the {MAX_RING_BYTES >> 20} MiB the step rings may (valid: at most "
                f"{MAX_RING_BYTES // RECORD_BYTES} records in all)")
        try:
            re.compile(self.disk_exclude)
        except re.error as e:
            raise ConfigError(
                f"agent.disk_exclude: {self.disk_exclude!r} is not a valid regular expression ({e})"
            ) from None
        if not self.socket and not self.udp_address and "training" in self.collectors:
            raise ConfigError(
                "agent.socket: '' and agent.udp_address: '' leave the training collector "
                "nothing to listen on (valid: set one, or disable the training collector)"
            )

    def listen(self) -> tuple[str, int]:
        """Return (host, port) of listen_address."""
        return split_hostport("agent.listen_address", self.listen_address)

    def udp(self) -> tuple[str, int] | None:
        """Return (host, port) of udp_address, or None when off."""
        return split_hostport("agent.udp_address", self.udp_address) if self.udp_address else None
