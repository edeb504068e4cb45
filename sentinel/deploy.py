"""``sentinel deploy``: what a deployment runs beside the daemons (docs/DEPLOY.md).

- ``file-sd``: write Prometheus file_sd targets for the agents from Slurm's node list
  (``sinfo --json`` through the controller's Slurm client), atomically; run by
  ``deploy/systemd/sentinel-file-sd.timer`` on the Prometheus host.
- ``healthcheck``: judge this node by its last burn-in (the textfile ``sentinel burnin
  --textfile`` wrote) and drain it with a ``sentinel:`` reason when a GPU failed; run
  by Slurm as HealthCheckProgram and from the Prolog (``deploy/slurm/``).

Exit codes: 0 written / healthy, 1 a problem (Slurm did not answer, a GPU failed its
burn-in), 2 bad usage, config or input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sentinel.config import ConfigError, read_yaml_file

EXIT_OK, EXIT_PROBLEM, EXIT_BAD = 0, 1, 2
DEFAULT_TEXTFILE = "/var/lib/sentinel/textfile/burnin.prom"
DEFAULT_AGENT_PORT = 9464
# Which of a node's names a target uses: NodeAddr is how slurmctld itself reaches the
# node, so it is the one most likely to be reachable from the Prometheus host too.
ADDRESS_CHOICES = ("address", "hostname", "name")
# Label carrying the Slurm node name on every target (the address may be an IP).
NODE_LABEL = "slurm_node"


def register(subparsers: Any) -> None:
    """Add the ``deploy`` subcommand and its commands."""
    p = subparsers.add_parser("deploy", help="deployment helpers: Prometheus file_sd from "
                              "Slurm, the Slurm health check", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    f = sub.add_parser("file-sd", help="write Prometheus file_sd targets of the agents from "
                       "Slurm's node list")
    f.add_argument("--config", help="YAML config (controller.slurm_bin_dir, "
                   "controller.slurm_timeout_seconds)")
    f.add_argument("--out", required=True, help="the file_sd JSON file to write (atomically)")
    f.add_argument("--port", type=int, default=DEFAULT_AGENT_PORT,
                   help=f"the agents' port (default {DEFAULT_AGENT_PORT})")
    f.add_argument("--address", choices=ADDRESS_CHOICES, default="address",
                   help="which name of a node to scrape: its NodeAddr (default), "
                   "NodeHostname or NodeName")
    f.add_argument("--partition", action="append", default=[],
                   help="only nodes of this partition (repeat for several; default all)")
    f.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                   help="a label on every target, e.g. cluster=train-a (repeatable)")
    f.set_defaults(func=_cmd_file_sd)
    h = sub.add_parser("healthcheck", help="drain this node when its last burn-in failed "
                       "(Slurm HealthCheckProgram / Prolog)")
    h.add_argument("--config", help="YAML config (controller.slurm_bin_dir, "
                   "controller.slurm_timeout_seconds)")
    h.add_argument("--textfile", default=DEFAULT_TEXTFILE,
                   help=f"the burn-in textfile (default {DEFAULT_TEXTFILE})")
    h.add_argument("--node", default="", help="Slurm node name (default $SLURMD_NODENAME, "
                   "else the short hostname)")
    h.set_defaults(func=_cmd_healthcheck)


def _slurm(config: str | None) -> Any:
    from sentinel.controller.daemon import load_configs
    from sentinel.controller.slurm import Slurm

    cfg, _policy, _jobs = load_configs(read_yaml_file(config) if config else None)
    return Slurm.from_config(cfg)


# -- file-sd ---------------------------------------------------------------------------

def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith(
                "__"):
            raise ConfigError(f"--label {pair!r}: not NAME=VALUE with a Prometheus label name "
                              "(valid: e.g. cluster=train-a)")
        if name in (NODE_LABEL, "job", "instance"):
            raise ConfigError(f"--label {pair!r}: {name} is set by sentinel or Prometheus "
                              "(valid: another name, e.g. cluster)")
        out[name] = value
    return out


def file_sd_groups(nodes: dict[str, Any], port: int, address: str = "address",
                   partitions: list[str] | None = None,
                   labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Return file_sd target groups, one per node (sorted by name), from sinfo's nodes."""
    groups = []
    for n in sorted(nodes.values(), key=lambda n: n.name):
        if partitions and not set(partitions) & set(n.partitions):
            continue
        host = {"address": n.address or n.hostname or n.name,
                "hostname": n.hostname or n.name, "name": n.name}[address]
        if ":" in host:
            host = f"[{host}]"  # an IPv6 NodeAddr
        groups.append({"targets": [f"{host}:{port}"],
                       "labels": {**(labels or {}), NODE_LABEL: n.name}})
    return groups


def write_file_sd(path: Path, groups: list[dict[str, Any]]) -> bool:
    """Replace ``path`` with ``groups`` atomically; return False when it already held them."""
    from sentinel.train._atomic import write_bytes_atomic

    data = (json.dumps(groups, indent=1, sort_keys=True) + "\n").encode()
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass  # absent or unreadable: write it
    # Prometheus reads the file as it is renamed in; the temporary name does not end in
    # .json, so a file_sd glob such as *.json never picks up a half-written file.
    write_bytes_atomic(path, data, 0o644)
    return True


def _cmd_file_sd(args: argparse.Namespace) -> int:
    from sentinel.controller.slurm import SlurmError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port (valid: 1..65535)")
    labels = _labels(args.label)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    slurm = _slurm(args.config)
    try:
        nodes = slurm.nodes()
    except SlurmError as e:
        print(f"sentinel deploy file-sd: {e}; {out} left as it was", file=sys.stderr)
        return EXIT_PROBLEM
    groups = file_sd_groups(nodes, args.port, args.address, args.partition, labels)
    if not groups:
        # An empty list would make Prometheus drop every agent: keep the last good file.
        where = f"partition {', '.join(args.partition)}" if args.partition else "the cluster"
        known = sorted({p for n in nodes.values() for p in n.partitions})
        print(f"sentinel deploy file-sd: Slurm lists no node in {where}; {out} left as it "
              f"was (partitions: {', '.join(known) or 'none'})", file=sys.stderr)
        return EXIT_PROBLEM
    changed = write_file_sd(out, groups)
    print(f"sentinel deploy file-sd: {len(groups)} agents -> {out}"
          + ("" if changed else " (unchanged)"))
    return EXIT_OK


# -- healthcheck -----------------------------------------------------------------------

def healthcheck_reason(failed: list[Any], finished_at: float | None) -> str:
    """Return the drain reason for failed GPUs: ``sentinel: burn-in failed: GPU 0 LOW_FLOPS``."""
    from sentinel.controller.slurm import BURNIN_FAILED_PREFIX, OWNER_PREFIX, owned_reason

    gpus = ", ".join(f"GPU {g.gpu} {g.verdict}" for g in failed)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished_at)) if finished_at \
        else "time unknown"
    summary = f"{BURNIN_FAILED_PREFIX[len(OWNER_PREFIX):].strip()}: {gpus}"
    return owned_reason(summary, f"healthcheck, burn-in of {when}")


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    from sentinel.burnin.report import read_textfile
    from sentinel.controller.slurm import SlurmError

    node = args.node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    path = Path(args.textfile)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"{node}: no burn-in result at {path}: nothing to judge")
        return EXIT_OK
    except (OSError, UnicodeDecodeError) as e:
        print(f"sentinel deploy healthcheck: cannot read {path} ({e})", file=sys.stderr)
        return EXIT_BAD
    try:
        gpus = read_textfile(text, str(path))
    except ValueError as e:
        print(f"sentinel deploy healthcheck: {e}", file=sys.stderr)
        return EXIT_BAD
    failed = [g for g in gpus if not g.ok]
    if not failed:
        print(f"{node}: burn-in passed on {len(gpus)} GPU(s)")
        return EXIT_OK
    finished = min((g.finished_at for g in failed if g.finished_at), default=None)
    reason = healthcheck_reason(failed, finished)
    slurm = _slurm(args.config)
    try:
        n = slurm.node(node)
        if n.drained:
            # Ours already, or a person's: either way nothing to add (never overwrite).
            print(f"{node}: burn-in failed ({reason}); already drained: {n.reason!r}")
            return EXIT_PROBLEM
        slurm.drain(node, reason)
    except SlurmError as e:
        print(f"{node}: burn-in failed but the node could not be drained: {e}",
              file=sys.stderr)
        return EXIT_PROBLEM
    print(f"{node}: drained: {reason}")
    return EXIT_PROBLEM
