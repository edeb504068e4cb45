"""Every Slurm call the controller makes: argv lists with a timeout, through an injected runner.

Reads and the formats they use (Slurm 22.05, the version Debian 12 ships):

- nodes: ``sinfo --json`` (the whole cluster in one call; the spare pool needs every
  node anyway). JSON because a node's reason, comment and OS are free text with spaces
  that ``scontrol show node -o`` prints unquoted. 22.05's ``sinfo --json`` ignores
  ``-n`` and reports errors in the document with exit code 0; both are handled here.
- reservations: ``scontrol show reservation -o`` (22.05's scontrol has no ``--json``;
  no reservation field holds free text in this version).
- jobs: ``squeue -h -O Field:|,...`` with ``-j ID`` or ``-n NAME`` (squeue's ``--json``
  ignores its filters in 22.05 and would list every job of a large cluster). ``|`` is
  the field separator; the name, the only free-text field, comes last.

Writes are ``scontrol update/create/delete/requeue/requeuehold/release``. 22.05 refuses
``Nodes+=``/``Nodes-=`` on a reservation ("The +=/-= notation is not supported when
updating Nodes"), so a node is moved in or out by setting the reservation's whole node
list.

Errors raise :class:`SlurmError` with the command, Slurm's own message and an outcome
class: a timeout or an unreachable slurmctld is transient; anything else (an invalid
node, reservation or job) is permanent. ``SLURM_CONF`` is passed through (or set from
``conf``) and ``bin_dir`` prefixes the Slurm tools.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from sentinel.controller.model import PERMANENT, TRANSIENT, ActionFailed

if TYPE_CHECKING:
    from sentinel.controller.config import ControllerConfig

# The tools a Slurm argv may start with; only these get controller.slurm_bin_dir.
SLURM_TOOLS = frozenset({"scontrol", "sinfo", "squeue", "sbatch", "srun", "scancel", "salloc"})
# Slurm's messages when slurmctld could not be reached or did not answer in time: the
# same call may work a moment later (slurmctld restarting, failing over, overloaded).
TRANSIENT_MESSAGES = (
    "unable to contact slurm controller",
    "socket timed out",
    "zero bytes were transmitted or received",
    "resource temporarily unavailable",
    "in standby mode",
    "connection refused",
    "communication connection failure",
    "slurm controller not responding",
    "slurmctld is busy",
)
# Node states in which a node is running work or could run it (sinfo's base state).
BUSY_STATES = frozenset({"ALLOCATED", "MIXED", "COMPLETING"})
# State flags that keep a node out of any new job.
UNAVAILABLE_FLAGS = frozenset({"DRAIN", "DRAINED", "DRAINING", "FAIL", "MAINTENANCE",
                               "NOT_RESPONDING", "POWERED_DOWN", "POWER_DOWN", "POWERING_DOWN",
                               "POWERING_UP", "REBOOT_REQUESTED", "REBOOT_ISSUED", "PLANNED",
                               "RESERVED", "COMPLETING", "INVALID_REG"})
# squeue -O fields read for a job, in this order; the name (free text) last.
JOB_FIELDS = ("JobID", "State", "Reservation", "Requeue", "RestartCnt", "NodeList", "Reason",
              "Name")


class SlurmError(Exception):
    """A Slurm command failed; ``outcome_class`` says whether trying again may help."""

    def __init__(self, message: str, outcome_class: str, command: Sequence[str],
                 slurm_message: str = "") -> None:
        super().__init__(message)
        self.outcome_class = outcome_class
        self.command = list(command)
        self.slurm_message = slurm_message

    @property
    def transient(self) -> bool:
        """Whether the same call may work later."""
        return self.outcome_class == TRANSIENT


class Completed(Protocol):
    """What a runner returns (``subprocess.CompletedProcess`` fits)."""

    returncode: int
    stdout: str
    stderr: str


# runner(argv, timeout_seconds, env) -> Completed; raises subprocess.TimeoutExpired.
Runner = Callable[[list[str], float, dict[str, str]], Completed]


def subprocess_runner(argv: list[str], timeout: float, env: dict[str, str]) -> Completed:
    """Run ``argv`` (never through a shell) and capture its output, within ``timeout``."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def classify(message: str) -> str:
    """Return TRANSIENT for Slurm's "controller unreachable/busy" messages, else PERMANENT."""
    low = message.lower()
    return TRANSIENT if any(m in low for m in TRANSIENT_MESSAGES) else PERMANENT


# -- hostlists -----------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: ``a[1-2,4],b`` -> ``a[1-2,4]``, ``b``."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [p for p in (s.strip() for s in out) if p]


def _expand_one(name: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", name)
    if m is None:
        return [name]
    head, tail = name[:m.start()], name[m.end():]
    out: list[str] = []
    for part in m.group(1).split(","):
        r = _RANGE.match(part.strip())
        if r is None:
            raise ValueError(f"hostlist {name!r}: bad range {part!r} (valid: N or N-M)")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        width = len(lo) if lo.startswith("0") else 0
        for i in range(int(lo), int(hi) + 1):
            out += _expand_one(f"{head}{str(i).zfill(width)}{tail}")
    return out


def expand_hostlist(text: str | None) -> list[str]:
    """Expand a Slurm hostlist (``node[1-2,4],gpu[01-02]``) to names, in Slurm's order."""
    if not text or text in ("(null)", "None"):
        return []
    out: list[str] = []
    for part in _split_top(text):
        out += _expand_one(part)
    return out


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One node as ``sinfo --json`` shows it."""

    name: str
    state: str                      # base state: IDLE, ALLOCATED, MIXED, DOWN, ...
    flags: frozenset[str] = frozenset()  # DRAIN, RESERVED, MAINTENANCE, NOT_RESPONDING, ...
    reason: str = ""
    reason_user: str = ""
    features: tuple[str, ...] = ()  # active features
    partitions: tuple[str, ...] = ()
    hostname: str = ""
    address: str = ""               # NodeAddr: where the node is reached (its agent too)

    @property
    def drained(self) -> bool:
        """Whether the node is drained or draining (it takes no new job)."""
        return bool(self.flags & {"DRAIN", "DRAINED", "DRAINING"}) or self.state in (
            "DRAINED", "DRAINING")

    @property
    def down(self) -> bool:
        """Whether the node is down or failed."""
        return self.state in ("DOWN", "FAIL", "FUTURE", "UNKNOWN") or "FAIL" in self.flags

    @property
    def busy(self) -> bool:
        """Whether jobs run on the node."""
        return self.state in BUSY_STATES or "COMPLETING" in self.flags

    @property
    def free(self) -> bool:
        """Whether the node is idle and nothing keeps it from a new job."""
        return self.state == "IDLE" and not (self.flags & UNAVAILABLE_FLAGS)

    def describe(self) -> str:
        """Return ``IDLE+DRAIN`` style state, as sinfo -N -l spells it."""
        return "+".join([self.state, *sorted(self.flags)])


@dataclass(frozen=True)
class Reservation:
    """One reservation as ``scontrol show reservation -o`` shows it."""

    name: str
    nodes: tuple[str, ...]
    flags: frozenset[str] = frozenset()
    users: tuple[str, ...] = ()
    state: str = ""
    raw: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Job:
    """One job as ``squeue -O`` shows it."""

    id: str
    name: str
    state: str                  # PENDING, RUNNING, COMPLETING, ...
    nodes: tuple[str, ...]
    reservation: str
    requeue: bool
    restarts: int
    reason: str

    @property
    def running(self) -> bool:
        """Whether the job runs now."""
        return self.state == "RUNNING"


# -- parsing (pure: unit tests feed it captured output) ------------------------------


def _node_state(raw: Any, flags: Iterable[str]) -> tuple[str, frozenset[str]]:
    # 22.05 writes "state": "idle" and "state_flags": [...]; 23.02+ writes one list.
    if isinstance(raw, list):
        parts = [str(s).upper() for s in raw]
        return (parts[0] if parts else "UNKNOWN"), frozenset(parts[1:]) | {
            str(f).upper() for f in flags}
    return str(raw or "UNKNOWN").upper(), frozenset(str(f).upper() for f in flags)


def _words(v: Any) -> tuple[str, ...]:
    if isinstance(v, list):
        return tuple(str(x) for x in v if str(x))
    return tuple(w for w in str(v or "").split(",") if w and w != "(null)")


def parse_sinfo_json(text: str, command: Sequence[str] = ("sinfo", "--json")) -> dict[str, Node]:
    """Parse ``sinfo --json`` into nodes by name; raise SlurmError on in-band errors."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SlurmError(f"{' '.join(command)}: output is not JSON ({e}): {text[:200]!r}",
                         TRANSIENT, command, text[:500]) from e
    errors = [e for e in doc.get("errors") or [] if e]
    if errors:
        # A whole-cluster listing has no argument that can be wrong: an error here is
        # slurmctld not answering (22.05 says only "Unspecified error", exit code 0).
        msg = "; ".join(f"{e.get('error', e)} (errno {e.get('errno', '?')})"
                        if isinstance(e, dict) else str(e) for e in errors)
        raise SlurmError(f"{' '.join(command)}: Slurm reported {msg}", TRANSIENT, command, msg)
    nodes: dict[str, Node] = {}
    for n in doc.get("nodes") or []:
        state, flags = _node_state(n.get("state"), n.get("state_flags") or [])
        feats = n.get("active_features", n.get("features", ""))
        nodes[str(n["name"])] = Node(
            name=str(n["name"]), state=state, flags=flags, reason=str(n.get("reason") or ""),
            reason_user=str(n.get("reason_set_by_user") or ""), features=_words(feats),
            partitions=_words(n.get("partitions")), hostname=str(n.get("hostname") or ""),
            address=str(n.get("address") or ""))
    return nodes


def parse_keyvalues(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` record of space-free ``Key=value`` pairs."""
    out: dict[str, str] = {}
    for tok in line.split():
        key, sep, value = tok.partition("=")
        if sep:
            out[key] = value
    return out


def parse_reservations(text: str) -> dict[str, Reservation]:
    """Parse ``scontrol show reservation -o`` (one line per reservation)."""
    out: dict[str, Reservation] = {}
    for line in text.splitlines():
        if not line.startswith("ReservationName="):
            continue  # "No reservations in the system"
        kv = parse_keyvalues(line)
        name = kv["ReservationName"]
        users = () if kv.get("Users") in (None, "", "(null)") else tuple(
            kv["Users"].split(","))
        out[name] = Reservation(
            name=name, nodes=tuple(expand_hostlist(kv.get("Nodes"))),
            flags=frozenset(f for f in kv.get("Flags", "").split(",") if f),
            users=users, state=kv.get("State", ""), raw=kv)
    return out


def parse_jobs(text: str, command: Sequence[str] = ("squeue",)) -> list[Job]:
    """Parse ``squeue -h -O JobID:|,...`` lines (fields as :data:`JOB_FIELDS`)."""
    jobs = []
    n = len(JOB_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) < n:
            raise SlurmError(f"{' '.join(command)}: cannot read job line {line!r} (expected "
                             f"{n} fields separated by '|')", PERMANENT, command, line)
        jid, state, res, requeue, restarts, nodes, reason, name = (p.strip() for p in parts)
        name = name[:-1] if name.endswith("|") else name
        jobs.append(Job(id=jid, name=name, state=state.upper(), nodes=tuple(
            expand_hostlist(nodes)), reservation="" if res in ("(null)", "") else res,
            requeue=requeue in ("1", "yes", "YES", "true"),
            restarts=int(restarts) if restarts.isdigit() else 0, reason=reason))
    return jobs


# -- the client --------------------------------------------------------------------------


class Slurm:
    """The controller's Slurm client: reads and writes through one runner, with a timeout."""

    def __init__(self, *, timeout: float = 30.0, bin_dir: str = "", conf: str = "",
                 runner: Runner | None = None) -> None:
        self.timeout = timeout
        self.bin_dir = bin_dir
        self.conf = conf
        self.runner: Runner = runner or subprocess_runner

    @classmethod
    def from_config(cls, cfg: ControllerConfig, runner: Runner | None = None) -> Slurm:
        """Return the client of ``controller.slurm_*`` settings (SLURM_CONF from the env)."""
        return cls(timeout=cfg.slurm_timeout_seconds, bin_dir=cfg.slurm_bin_dir, runner=runner)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """Return ``argv`` with controller.slurm_bin_dir in front of a Slurm tool."""
        out = list(argv)
        if out and self.bin_dir and out[0] in SLURM_TOOLS:
            out[0] = os.path.join(self.bin_dir, out[0])
        return out

    def env(self) -> dict[str, str]:
        """Return the environment of Slurm commands (``SLURM_CONF`` set from ``conf``)."""
        env = dict(os.environ)
        if self.conf:
            env["SLURM_CONF"] = self.conf
        return env

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            check: bool = True) -> Completed:
        """Run one command; raise SlurmError on a timeout, a missing tool or (check) rc != 0."""
        cmd = self.argv(argv)
        limit = self.timeout if timeout is None else timeout
        shown = " ".join(cmd)
        try:
            res = self.runner(cmd, limit, self.env())
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{shown}: no answer within {limit:.0f} s "
                             "(controller.slurm_timeout_seconds)", TRANSIENT, cmd,
                             "timed out") from e
        except FileNotFoundError as e:
            raise SlurmError(f"{shown}: {cmd[0]} not found (install slurm-client or set "
                             "controller.slurm_bin_dir)", PERMANENT, cmd, str(e)) from e
        if check and res.returncode != 0:
            msg = (res.stderr or "").strip() or (res.stdout or "").strip() or \
                f"exit code {res.returncode}"
            raise SlurmError(f"{shown}: {msg}", classify(msg), cmd, msg)
        return res

    # -- reads -----------------------------------------------------------------------

    def nodes(self) -> dict[str, Node]:
        """Return every node of the cluster by name."""
        cmd = ["sinfo", "--json"]
        return parse_sinfo_json(self.run(cmd).stdout, self.argv(cmd))

    def node(self, name: str) -> Node:
        """Return one node; raise a permanent SlurmError naming the known ones if absent."""
        nodes = self.nodes()
        if name not in nodes:
            known = ", ".join(sorted(nodes)[:20]) + (" ..." if len(nodes) > 20 else "")
            raise SlurmError(f"node {name!r} is not in the cluster (nodes: {known})",
                             PERMANENT, ["sinfo", "--json"], f"Node {name} not found")
        return nodes[name]

    def reservations(self) -> dict[str, Reservation]:
        """Return every reservation by name."""
        return parse_reservations(self.run(["scontrol", "-o", "show", "reservation"]).stdout)

    def reservation(self, name: str) -> Reservation | None:
        """Return one reservation, or None if it does not exist."""
        cmd = ["scontrol", "-o", "show", "reservation", name]
        res = self.run(cmd, check=False)
        if res.returncode != 0:
            msg = (res.stderr or res.stdout or "").strip()
            if "not found" in msg.lower():
                return None
            raise SlurmError(f"{' '.join(self.argv(cmd))}: {msg}", classify(msg), self.argv(cmd),
                             msg)
        return parse_reservations(res.stdout).get(name)

    def job(self, ref: str) -> Job | None:
        """Return a job by id (digits) or name (its newest), or None if Slurm has none."""
        fmt = ",".join(f"{f}:|" for f in JOB_FIELDS)
        sel = ["-j", ref] if ref.isdigit() else ["-n", ref]
        cmd = ["squeue", "-h", "-t", "all", *sel, "-O", fmt]
        res = self.run(cmd, check=False)
        if res.returncode != 0:
            msg = (res.stderr or res.stdout or "").strip()
            if "invalid job id" in msg.lower():
                return None  # finished and purged, or never existed
            raise SlurmError(f"{' '.join(self.argv(cmd))}: {msg}", classify(msg), self.argv(cmd),
                             msg)
        jobs = parse_jobs(res.stdout, self.argv(cmd))
        if not jobs:
            return None
        return max(jobs, key=lambda j: int(j.id) if j.id.isdigit() else -1)

    # -- writes ----------------------------------------------------------------------

    def drain(self, node: str, reason: str) -> None:
        """Drain a node with ``reason`` (running jobs finish; no new job starts there)."""
        self.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])

    def resume(self, node: str) -> None:
        """Resume a drained node."""
        self.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"])

    def create_reservation(self, name: str, nodes: Sequence[str], users: Sequence[str],
                           flags: Sequence[str] = ("MAINT", "IGNORE_JOBS")) -> None:
        """Create a reservation of ``nodes`` starting now, open-ended."""
        self.run(["scontrol", "create", "reservation", f"ReservationName={name}",
                  f"Nodes={','.join(nodes)}", "StartTime=now", "Duration=infinite",
                  f"Users={','.join(users)}", f"Flags={','.join(flags)}"])

    def set_reservation_nodes(self, name: str, nodes: Sequence[str]) -> None:
        """Set a reservation's whole node list (22.05 has no ``Nodes+=``/``Nodes-=``)."""
        self.run(["scontrol", "update", f"ReservationName={name}", f"Nodes={','.join(nodes)}"])

    def delete_reservation(self, name: str) -> None:
        """Delete a reservation."""
        self.run(["scontrol", "delete", f"ReservationName={name}"])

    def requeue(self, job_id: str) -> None:
        """Requeue a job (it goes back to pending and starts again)."""
        self.run(["scontrol", "requeue", job_id])

    def requeue_hold(self, job_id: str) -> None:
        """Requeue a job and hold it: it stops and stays pending until released."""
        self.run(["scontrol", "requeuehold", job_id])

    def release(self, job_id: str) -> None:
        """Let a held job be scheduled again."""
        self.run(["scontrol", "release", job_id])

    def submit(self, options: Sequence[str], command: str) -> str:
        """Submit ``command`` as a batch job (``sbatch --wrap``) with ``options``; return its id.

        ``options`` are sbatch's own (``--requeue``, ``-p PART``, ...); ``--parsable``
        is added. sbatch's ``--wrap`` writes the one-line script itself: no shell here.
        """
        res = self.run(["sbatch", "--parsable", *options, f"--wrap={command}"])
        # --parsable prints "ID" or "ID;CLUSTER".
        job_id = res.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            cmd = self.argv(["sbatch", "--parsable", *options])
            raise SlurmError(f"{' '.join(cmd)}: no job id in its output {res.stdout[:200]!r}",
                             PERMANENT, cmd, res.stdout[:500])
        return job_id

    def cancel(self, job_id: str) -> None:
        """Cancel a job (a job already gone is not an error)."""
        cmd = ["scancel", job_id]
        res = self.run(cmd, check=False)
        msg = (res.stderr or res.stdout or "").strip()
        if res.returncode != 0 and "invalid job id" not in msg.lower() and \
                "already completed" not in msg.lower():
            raise SlurmError(f"{' '.join(self.argv(cmd))}: {msg}", classify(msg),
                             self.argv(cmd), msg)


def is_write(argv: Sequence[str]) -> bool:
    """Whether a Slurm argv changes the cluster (for recording runners and dry runs)."""
    tool = os.path.basename(argv[0]) if argv else ""
    if tool == "scontrol":
        return len(argv) > 1 and argv[1] in ("update", "create", "delete", "requeue",
                                             "requeuehold", "release", "hold", "reconfigure")
    return tool in ("sbatch", "scancel", "srun", "salloc")


# -- owner scope -----------------------------------------------------------------------

# Only nodes whose drain reason starts with this were drained by sentinel; only those are
# ever resumed by it. A node drained by a person or another tool is never touched.
OWNER_PREFIX = "sentinel:"
# A node sentinel drained because it failed a burn-in waits for a person (repair, RMA):
# sentinel does not burn it in again on its own.
BURNIN_FAILED_PREFIX = f"{OWNER_PREFIX} burn-in failed"
# Slurm keeps a reason of any length, but sinfo -R and people read the first line.
REASON_MAX = 200


def owned(node: Node) -> bool:
    """Whether the node is drained by sentinel (its reason starts with ``sentinel:``)."""
    return node.drained and node.reason.startswith(OWNER_PREFIX)


def drain_reason(summary: str, incident: str) -> str:
    """Return ``sentinel: <summary> [incident ID]``, one line, at most REASON_MAX long."""
    return owned_reason(summary, f"incident {incident}")


def owned_reason(summary: str, source: str) -> str:
    """Return ``sentinel: <summary> [<source>]``, one line, at most REASON_MAX long."""
    tail = f" [{source}]"
    text = " ".join(summary.split())
    room = REASON_MAX - len(OWNER_PREFIX) - 1 - len(tail)
    if len(text) > room:
        text = text[:room - 3].rstrip() + "..."
    return f"{OWNER_PREFIX} {text}{tail}"


P = ParamSpec("P")
R = TypeVar("R")


def slurm_failures(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a SlurmError raised by ``fn`` into an ActionFailed of the same outcome class."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SlurmError as e:
            raise ActionFailed(str(e), e.outcome_class, {"command": e.command}) from e

    return wrapper
