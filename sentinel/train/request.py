"""The requesting side of an in-process rollback, importable without torch.

A requester (``sentinel rollback``, the controller) chooses a verified checkpoint, writes
a request signed with the run's token into ``RUN_DIR/rollback/requests/ID.json``,
signals the job's ranks on this host (SIGUSR1) and reads the job's answer from
``RUN_DIR/rollback/results/ID.json``. The job's side is
:class:`sentinel.train.rollback.RollbackHandler`; both take the file layout, the request
format and its signature from here.

The caller names the request (``request_id``) so it can journal the id before it
submits: :func:`submit` is idempotent for an id, and :func:`status` tells from the files
alone how far a request got, so a requester that restarts after a crash can reconcile.

Only processes that prove they are the job are signalled: each rank records its PID
with its host, its start time (``/proc/PID/stat``), the boot it started in, and an HMAC
of those under the run's token (:func:`write_pid_file`); the requester checks all of it
and signals through a pidfd, so a PID file left by a dead job (its PID reused) or
written by someone without the token never gets a process killed by SIGUSR1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sentinel.config import read_regular_file
from sentinel.train._atomic import fsync_dir, write_json_atomic
from sentinel.train.checkpoint import CheckpointError, CheckpointStore
from sentinel.train.skipplan import SkipPlan, SkipPlanError

log = logging.getLogger(__name__)

CONTROL_DIR = ".sentinel"
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
PID_DIR = "pids"
REQUEST_DIR = "rollback/requests"
RESULT_DIR = "rollback/results"
REJECTED_SUFFIX = ".rejected"
# The group, besides the job's user, that may read the run's token and so request a
# rollback (a controller running as another user is made a member of it).
CONTROL_GROUP_ENV = "SENTINEL_CONTROL_GROUP"
# A request holds no secret (its HMAC cannot sign another request), and the job, which
# may run as another user than the requester, must be able to read it.
REQUEST_MODE = 0o644
ROLLBACK_SIGNAL = signal.SIGUSR1
# How often wait_result looks for the job's answer; the job answers within a step.
RESULT_POLL_S = 0.1
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A request or result is a few hundred bytes; anything much larger is not one, and is
# refused before it is read whole (a job polls this directory for the whole run).
MAX_FILE_BYTES = 64 * 1024
# Highest step a request may name: far beyond any run, far below where arithmetic on it
# (or a float holding it) goes wrong.
MAX_STEP = 2**53
PROC = Path("/proc")


class RollbackError(Exception):
    """A rollback request cannot be made or read; the message says why and what to do."""


# -- files -----------------------------------------------------------------------------
def token_path(run_dir: str | Path) -> Path:
    """Return where the run's token lives."""
    return Path(run_dir) / CONTROL_DIR / TOKEN_FILE


def pid_dir(run_dir: str | Path) -> Path:
    """Return the directory where each rank records its PID and host."""
    return Path(run_dir) / CONTROL_DIR / PID_DIR


def request_path(run_dir: str | Path, request_id: str) -> Path:
    """Return where request ``request_id`` waits for the job."""
    return Path(run_dir) / REQUEST_DIR / f"{request_id}.json"


def result_path(run_dir: str | Path, request_id: str) -> Path:
    """Return where the job writes the outcome of request ``request_id``."""
    return Path(run_dir) / RESULT_DIR / f"{request_id}.json"


def read_token(run_dir: str | Path) -> bytes:
    """Read the run's token, or raise RollbackError saying how to get one."""
    path = token_path(run_dir)
    try:
        tok = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise RollbackError(
            f"no run token at {path}: the job creates it when its rollback handler is "
            "installed; is --run-dir the job's run directory and is the job running?"
        ) from None
    except PermissionError:
        raise RollbackError(
            f"cannot read {path}: only the job's user, and the members of its control group "
            f"when the job names one ({CONTROL_GROUP_ENV}), may request a rollback"
        ) from None
    if len(tok) < 32:
        raise RollbackError(f"run token {path} is too short to be one sentinel wrote")
    return tok.encode("ascii")


def check_id(request_id: str) -> None:
    """Raise RollbackError unless ``request_id`` is safe as a file name."""
    if not _ID_RE.match(request_id):
        raise RollbackError(f"request id {request_id!r}: use 1-64 of A-Z a-z 0-9 _ . -")


# -- the request -----------------------------------------------------------------------
@dataclass(frozen=True)
class RollbackRequest:
    """Ask job ``job`` to reload checkpoint ``to_step`` and skip ``skip`` batch ranges."""

    id: str
    job: str
    to_step: int
    skip: list[tuple[int, int]] = field(default_factory=list)
    requested_by: str = ""
    reason: str = ""
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the canonical JSON form (what is signed)."""
        d = asdict(self)
        d["skip"] = [[int(a), int(b)] for a, b in self.skip]
        return d

    @classmethod
    def from_json(cls, d: Any) -> RollbackRequest:
        """Parse a request object strictly, or raise RollbackError naming the bad field.

        Nothing is coerced: ``to_step`` and the skip bounds are integers (not floats,
        not booleans), ``created`` a finite number, the texts strings, and no key is
        unknown. A value that Python would turn into something else (``1e400`` into
        infinity, ``true`` into 1) is refused, not interpreted.
        """
        valid = ("valid: {id, job, to_step (integer >= 0), created (unix time), skip "
                 "([[start, end], ...] integers), requested_by, reason}")
        if not isinstance(d, dict):
            raise RollbackError(f"request must be an object, got {type(d).__name__}; {valid}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise RollbackError(f"request has unknown key {unknown[0]!r}; {valid}")
        for key in ("id", "job", "to_step", "created"):
            if key not in d:
                raise RollbackError(f"request has no {key!r}; {valid}")
        for key in ("id", "job", "requested_by", "reason"):
            if not isinstance(d.get(key, ""), str):
                raise RollbackError(f"request {key!r} is {d[key]!r}; {valid}")
        skip = d.get("skip", [])
        if not isinstance(skip, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(_is_count(x) for x in r)
                for r in skip):
            raise RollbackError(f"request 'skip' is {_short(skip)}; {valid}")
        if not _is_count(d["to_step"]):
            raise RollbackError(f"request 'to_step' is {_short(d['to_step'])}; {valid}")
        created = d["created"]
        if isinstance(created, bool) or not isinstance(created, int | float) or not (
                math.isfinite(created)):
            raise RollbackError(f"request 'created' is {_short(created)}; {valid}")
        req = cls(id=d["id"], job=d["job"], to_step=d["to_step"],
                  skip=[(a, b) for a, b in skip], requested_by=d.get("requested_by", ""),
                  reason=d.get("reason", ""), created=float(created))
        check_id(req.id)
        return req

    def same_rollback(self, other: RollbackRequest) -> bool:
        """Return True if ``other`` asks for the same thing (who, why and when aside)."""
        return (self.job, self.to_step, list(self.skip)) == (
            other.job, other.to_step, list(other.skip))


def _is_count(x: Any) -> bool:
    """Return whether ``x`` is an integer step or batch index (0..MAX_STEP, not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_STEP


def _short(x: Any) -> str:
    """Return ``repr(x)`` cut to a readable length (a request may hold a 5000-digit int)."""
    if isinstance(x, int) and abs(x) >= 10**30:
        return f"an integer of {x.bit_length()} bits"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def read_json_file(path: Path, what: str) -> Any:
    """Read a small JSON file of the run directory, or raise RollbackError saying why.

    Not a regular file (a FIFO would hang the job), larger than MAX_FILE_BYTES, not
    UTF-8, not JSON or nested too deeply: all are errors naming the file, never a hang
    or an unexpected exception. FileNotFoundError passes through.
    """
    try:
        data = read_regular_file(str(path), what, max_bytes=MAX_FILE_BYTES,
                                 valid="valid: a JSON file sentinel wrote", error=RollbackError)
    except RollbackError:
        if not path.exists() and not path.is_symlink():  # gone (answered and removed)
            raise FileNotFoundError(path) from None
        raise
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = f"not JSON ({type(e).__name__})"
    raise RollbackError(f"{what}: {path}: {why}")


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(request: RollbackRequest, token: bytes) -> str:
    """Return the HMAC-SHA256 of the request's canonical JSON under ``token``."""
    return hmac.new(token, _canonical(request.to_json()), hashlib.sha256).hexdigest()


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` atomically unless it exists; return False if it did.

    The complete file is linked into place (link fails on an existing name), so a reader
    never sees a partial request and two submitters of one id cannot both write it.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the requester's umask: the job must read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_request(run_dir: str | Path, request: RollbackRequest, token: bytes) -> Path | None:
    """Write a signed request into the run directory; return its path, None if it exists."""
    check_id(request.id)
    path = request_path(run_dir, request.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"request": request.to_json(), "signature": sign(request, token)}
    data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")
    return path if _create_exclusive(path, data, REQUEST_MODE) else None


# -- choosing the checkpoint -----------------------------------------------------------
def choose_target(
    store_or_dir: CheckpointStore | str | Path,
    *,
    to_step: int | None = None,
    before_step: int | None = None,
) -> int:
    """Return the step to roll back to, or raise RollbackError saying why there is none.

    With ``to_step``, check that checkpoint exists, is live and verifies; with
    ``before_step``, take the newest verified one at or before it; with neither, the
    newest verified one. Checking streams the file (no whole-file read).
    """
    if to_step is not None and before_step is not None:
        raise RollbackError("give to_step or before_step, not both")
    store = (store_or_dir if isinstance(store_or_dir, CheckpointStore)
             else CheckpointStore(store_or_dir, writer=False))
    try:
        if to_step is not None:
            return store.require_verified(int(to_step)).step
        found = store.latest_verified(before_step=before_step)
        if found is not None:
            return found.step
        have = [c.step for c in store.checkpoints()]
    except CheckpointError as e:
        raise RollbackError(str(e)) from e
    where = "" if before_step is None else f" at or before step {before_step}"
    older = [s for s in have if before_step is None or s <= before_step]
    if not have:
        why = "has the job saved one, and is this its checkpoint directory?"
    elif older:
        why = f"{', '.join(map(str, older))} did not verify: see the log for why"
    else:
        why = "every checkpoint is newer"
    raise RollbackError(f"no verified checkpoint{where} in {store.dir} (checkpoints: "
                        f"{', '.join(map(str, have)) or 'none'}); {why}")


# -- PIDs ------------------------------------------------------------------------------
def process_start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """Return when process ``pid`` started (clock ticks after boot), or None if it is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    rest = raw.rsplit(b")", 1)[-1].split()
    try:
        return int(rest[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def boot_id(proc: Path = PROC) -> str:
    """Return this boot's id (a start time means nothing across reboots)."""
    try:
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_signature(rec: dict[str, Any], token: bytes) -> str:
    body = {k: rec.get(k) for k in ("pid", "host", "start_ticks", "boot_id")}
    return hmac.new(token, b"pid\n" + _canonical(body), hashlib.sha256).hexdigest()


def write_pid_file(run_dir: str | Path, rank: int, token: bytes, *, pid: int | None = None,
                   host: str | None = None, proc: Path = PROC) -> Path:
    """Record that rank ``rank`` of the job is process ``pid`` (default: this one).

    The record proves itself: host, start time and boot id name exactly one process
    ever, and the HMAC under the run's token shows the job wrote it. ``host`` defaults
    to this one (a launcher may record the ranks it started elsewhere).
    """
    pid = os.getpid() if pid is None else pid
    rec: dict[str, Any] = {"pid": pid, "host": host or socket.gethostname(),
                           "start_ticks": process_start_ticks(pid, proc),
                           "boot_id": boot_id(proc)}
    rec["signature"] = _pid_signature(rec, token)
    d = pid_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"rank-{rank}.pid"
    write_json_atomic(path, rec)
    return path


def _proven(path: Path, token: bytes, here: str, boot: str, proc: Path) -> tuple[int, int]:
    """Return (pid, start ticks) of the rank a PID file records, or raise saying why not."""
    rec = read_json_file(path, "PID file")
    if not isinstance(rec, dict) or not isinstance(rec.get("signature"), str):
        raise RollbackError("not a signed PID record (written by an older sentinel, or not "
                            "by the job)")
    if not hmac.compare_digest(rec["signature"].encode("utf-8"),
                               _pid_signature(rec, token).encode("ascii")):
        raise RollbackError("its signature does not match this run's token")
    pid, ticks = rec.get("pid"), rec.get("start_ticks")
    if not isinstance(pid, int) or not isinstance(ticks, int) or not (
            _is_count(pid) and _is_count(ticks)):
        raise RollbackError(f"pid {pid!r} / start_ticks {ticks!r} are not valid")
    if rec.get("host") != here:
        raise RollbackError(f"rank on host {rec.get('host')!r}, not here")
    if rec.get("boot_id") != boot:
        raise RollbackError("written before this machine last booted")
    now = process_start_ticks(pid, proc)
    if now is None:
        raise ProcessLookupError(pid)
    if now != ticks:
        raise RollbackError(f"PID {pid} is now another process (the job's ended)")
    return pid, ticks


def _job_ranks(run_dir: str | Path, token: bytes, proc: Path
               ) -> tuple[dict[int, int], list[int], list[str]]:
    """Return ({pid: start ticks} proven here, PIDs gone, why the others were refused)."""
    proven: dict[int, int] = {}
    gone: list[int] = []
    refused: list[str] = []
    here, boot = socket.gethostname(), boot_id(proc)
    d = pid_dir(run_dir)
    if d.is_dir():
        for p in sorted(d.glob("*.pid")):
            try:
                pid, ticks = _proven(p, token, here, boot, proc)
            except ProcessLookupError as e:
                gone.append(int(e.args[0]))
            except (RollbackError, FileNotFoundError) as e:
                refused.append(f"{p.name}: {e}")
            else:
                proven[pid] = ticks
    for why in refused:
        log.info("not signalling: %s", why)
    return proven, gone, refused


def job_pids(run_dir: str | Path, *, token: bytes | None = None, proc: Path = PROC
             ) -> list[int]:
    """Return the PIDs of the job's ranks on this host that prove they are the job.

    The run directory is shared by every node of a job; a PID recorded on another host,
    in another boot, or for a process that has since ended names some other process
    here, which SIGUSR1 would kill (its default action). ``token`` defaults to the run's.
    """
    token = read_token(run_dir) if token is None else token
    return sorted(_job_ranks(run_dir, token, proc)[0])


def _send(pid: int, ticks: int, proc: Path) -> bool:
    """Signal ``pid`` if it is still the process that started at ``ticks``; False if gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (kernel < 5.3): check, then kill, with a tiny race
        fd = -1
    try:
        if process_start_ticks(pid, proc) != ticks:
            return False  # the rank ended; its PID is being reused
        if fd >= 0:
            # The descriptor pins the process we checked: no PID reuse in between.
            signal.pidfd_send_signal(fd, ROLLBACK_SIGNAL)
        else:
            os.kill(pid, ROLLBACK_SIGNAL)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise RollbackError(f"not allowed to signal PID {pid}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def signal_job(run_dir: str | Path, pids: list[int] | None = None, *,
               token: bytes | None = None, proc: Path = PROC) -> tuple[list[int], list[int]]:
    """Send the rollback signal to this host's ranks of the job (or those of ``pids``).

    Only ranks whose PID file proves them (see :func:`job_pids`) are signalled, also
    when ``pids`` names them. Return (signalled, not running). Raise RollbackError when
    none can be signalled, saying why, or one may not be.
    """
    token = read_token(run_dir) if token is None else token
    proven, gone, refused = _job_ranks(run_dir, token, proc)
    targets = sorted(proven)
    if pids:
        refused += [f"PID {p} is not one of the job's ranks recorded on this host"
                    for p in pids if p not in proven and p not in gone]
        targets = [p for p in targets if p in pids]
        gone = [p for p in gone if p in pids]
    signalled, missing = [], list(gone)
    for pid in targets:
        if _send(pid, proven[pid], proc):
            signalled.append(pid)
        else:
            log.warning("job PID %d is not running", pid)
            missing.append(pid)
    if not signalled and not missing:
        why = "; ".join(refused) or f"no rank recorded its PID in {pid_dir(run_dir)}"
        raise RollbackError(f"no rank of the job on this host can be signalled ({why})")
    return signalled, missing


# -- submitting ------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    """What :func:`submit` did: the request on disk, and which PIDs it signalled."""

    request: RollbackRequest
    path: Path
    already_existed: bool
    status: str
    signalled: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    # Why no rank was signalled (the job still finds the request by polling), or "".
    unsignalled: str = ""


def _existing(run_dir: Path, request_id: str) -> RollbackRequest | None:
    """Return the request of that id already on disk (pending or rejected), if any."""
    for path in (request_path(run_dir, request_id),
                 request_path(run_dir, request_id).with_suffix(REJECTED_SUFFIX)):
        try:
            raw = read_json_file(path, "rollback request")
            return RollbackRequest.from_json(raw.get("request") if isinstance(raw, dict)
                                             else None)
        except FileNotFoundError:
            continue
        except (OSError, RollbackError) as e:
            raise RollbackError(f"request {path} exists but cannot be read ({e}); "
                                "choose another request id") from e
    return None


def _same_or_raise(run_dir: Path, req: RollbackRequest) -> RollbackRequest:
    """Return the request already submitted under ``req.id``; raise if it asked otherwise."""
    on_disk = _existing(run_dir, req.id)
    if on_disk is None:
        # Answered and removed by the job: the result still says which step.
        result = read_result(run_dir, req.id) or {}
        step = result.get("to_step", req.to_step)
        if step != req.to_step:
            raise RollbackError(f"request id {req.id!r} was already used to roll back to "
                                f"step {step}; choose a new request id")
        return req
    if not on_disk.same_rollback(req):
        raise RollbackError(
            f"request id {req.id!r} was already used for another rollback (job "
            f"{on_disk.job!r}, to step {on_disk.to_step}, skip {on_disk.skip}); choose a new "
            "request id")
    return on_disk


def submit(
    run_dir: str | Path,
    job: str,
    to_step: int,
    skip: list[tuple[int, int]],
    *,
    request_id: str,
    requested_by: str,
    reason: str,
    signal: bool = True,
    pids: list[int] | None = None,
    resignal: bool = False,
    token: bytes | None = None,
    now: float | None = None,
) -> Submission:
    """Write the signed request ``request_id`` and signal the job; idempotent for the id.

    If that request (pending, rejected or answered) already exists, nothing is written
    and the job is signalled again only if ``resignal`` (and the request is pending).
    The same id asking for another rollback (job, step or skip ranges) is an error.
    ``token`` is the run's token; by default it is read from the run directory (which
    only the job's user can do). A request that no rank could be signalled about is
    not an error: the job's rank 0 finds it by polling; ``unsignalled`` says why.
    """
    run_dir = Path(run_dir)
    check_id(request_id)
    if not run_dir.is_dir():
        raise RollbackError(f"run directory {run_dir} does not exist")
    req = RollbackRequest(id=request_id, job=job, to_step=int(to_step), skip=list(skip),
                          requested_by=requested_by, reason=reason,
                          created=time.time() if now is None else now)
    path = request_path(run_dir, request_id)
    written = False
    if status(run_dir, request_id) == "absent":
        # Only a new request is checked against the plan: an applied one is in it.
        try:
            SkipPlan(run_dir).check(req.skip)
        except SkipPlanError as e:
            raise RollbackError(str(e)) from e
        token = read_token(run_dir) if token is None else token
        written = write_request(run_dir, req, token) is not None
        if written and read_result(run_dir, request_id) is not None:
            # Answered between the look and the write (the job removes a request after
            # answering it): take the copy back rather than leave it to be rejected.
            path.unlink(missing_ok=True)
            written = False
    state = status(run_dir, request_id)
    if written:
        log.info("wrote rollback request %s (to step %d, skip %s)", path, req.to_step, req.skip)
    else:
        req = _same_or_raise(run_dir, req)
        log.info("rollback request %s already exists (%s): not written again", request_id,
                 state)
    signalled: list[int] = []
    missing: list[int] = []
    unsignalled = ""
    if signal and state == "pending" and (written or resignal):
        try:
            signalled, missing = signal_job(run_dir, pids, token=token)
        except RollbackError as e:
            unsignalled = str(e)
            log.warning("request %s written, but %s; the job finds it when it next polls",
                        path, e)
    return Submission(req, path, not written, state, signalled, missing, unsignalled)


# -- the answer ------------------------------------------------------------------------
def read_result(run_dir: str | Path, request_id: str) -> dict[str, Any] | None:
    """Return the outcome of a request, or None while there is none."""
    path = result_path(run_dir, request_id)
    try:
        data = read_json_file(path, "rollback result")
    except FileNotFoundError:
        return None
    except (OSError, RollbackError) as e:
        raise RollbackError(f"result {path} cannot be read ({e}); the job writes it "
                            "atomically, so something else damaged it") from e
    if not isinstance(data, dict):
        raise RollbackError(f"result {path}: expected a JSON object, got {type(data).__name__}")
    return data


def status(run_dir: str | Path, request_id: str) -> str:
    """Return how far request ``request_id`` got, from the files alone.

    ``absent``: no trace of the id; ``pending``: written, not handled yet; ``rejected``:
    ignored by the job (bad signature, or an id already handled); ``done``: applied;
    ``refused``: the result says why. The result is looked at first and again last: the
    job writes the result before it removes the request, so a request that vanishes
    between two looks is answered.
    """
    check_id(request_id)
    for attempt in range(2):
        result = read_result(run_dir, request_id)
        if result is not None:
            return str(result.get("status", "unknown"))
        if attempt:
            break
        req = request_path(run_dir, request_id)
        if req.exists():
            return "pending"
        if req.with_suffix(REJECTED_SUFFIX).exists():
            return "rejected"
    return "absent"


def wait_result(
    run_dir: str | Path,
    request_id: str,
    timeout_s: float,
    *,
    poll_s: float = RESULT_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, Any] | None:
    """Return the job's answer to ``request_id``, or None after ``timeout_s`` without one.

    Looks at least once, so ``timeout_s=0`` is a non-blocking read.
    """
    deadline = monotonic() + timeout_s
    while True:
        result = read_result(run_dir, request_id)
        if result is not None:
            return result
        left = deadline - monotonic()
        if left <= 0:
            return None
        sleep(min(poll_s, left))


# -- what a controller needs besides the request ---------------------------------------
# Torch-free wrappers over the checkpoint manifest and the skip plan, so a requester that
# may import only this module (the controller) can pin the target, read the plan, and do
# for a job without a rollback handler what the handler would (skip plan, abandon).
def _store(checkpoint_dir: str | Path) -> CheckpointStore:
    return CheckpointStore(checkpoint_dir, writer=False)


def checkpoint_steps(checkpoint_dir: str | Path) -> list[int]:
    """Return the steps of the live (not abandoned) checkpoints, oldest first."""
    try:
        return [c.step for c in _store(checkpoint_dir).checkpoints()]
    except CheckpointError as e:
        raise RollbackError(str(e)) from e


def pin(checkpoint_dir: str | Path, step: int, holder: str) -> None:
    """Keep checkpoint ``step`` from retention while ``holder`` (an incident) needs it."""
    try:
        _store(checkpoint_dir).pin(int(step), holder)
    except CheckpointError as e:
        raise RollbackError(str(e)) from e


def unpin(checkpoint_dir: str | Path, holder: str) -> None:
    """Release ``holder``'s pin (no-op without one); the job's next save applies retention."""
    try:
        _store(checkpoint_dir).unpin(holder)
    except CheckpointError as e:
        raise RollbackError(str(e)) from e


def pins(checkpoint_dir: str | Path) -> dict[str, int]:
    """Return ``{holder: step}`` of the pinned checkpoints."""
    try:
        return _store(checkpoint_dir).pins()
    except CheckpointError as e:
        raise RollbackError(str(e)) from e


def abandon_after(checkpoint_dir: str | Path, step: int, reason: str) -> list[int]:
    """Take checkpoints newer than ``step`` off the run's timeline; return their steps.

    What the rollback handler does in-process, for a job that is resumed by a restart
    instead: it then resumes from ``step``, the newest live checkpoint. No file is
    deleted here (the job's next save applies retention).
    """
    try:
        return _store(checkpoint_dir).abandon_after(int(step), reason)
    except CheckpointError as e:
        raise RollbackError(str(e)) from e


def skip_ranges(run_dir: str | Path) -> list[tuple[int, int]]:
    """Return the run's skip plan as half-open batch ranges, sorted."""
    try:
        return [(r.start, r.end) for r in SkipPlan(run_dir).ranges]
    except SkipPlanError as e:
        raise RollbackError(str(e)) from e


def add_skips(run_dir: str | Path, ranges: list[tuple[int, int]], *, added_by: str,
              reason: str) -> bool:
    """Add ``ranges`` to the run's skip plan; False if every one is in it already.

    For a job without a rollback handler, stopped while this runs: it reads the plan
    when it starts again. A range that overlaps another is refused (RollbackError).
    """
    try:
        plan = SkipPlan(run_dir)
        have = {(r.start, r.end) for r in plan.ranges}
        if all((int(a), int(b)) in have for a, b in ranges):
            return False
        plan.add([(int(a), int(b)) for a, b in ranges], added_by=added_by, reason=reason)
    except SkipPlanError as e:
        raise RollbackError(f"skip plan {Path(run_dir) / 'skip_plan.json'}: {e}") from e
    return True


def handler_missing(run_dir: str | Path) -> str | None:
    """Return why the job seems to run no rollback handler, or None if it does.

    The handler leaves the run's token and one PID file per rank (of any host); a job
    that exited cleanly removed its PID files.
    """
    try:
        if not token_path(run_dir).exists():
            return f"no run token at {token_path(run_dir)}"
        if not any(pid_dir(run_dir).glob("*.pid")):
            return f"no rank PID files in {pid_dir(run_dir)}"
    except PermissionError as e:
        return (f"cannot look into {Path(run_dir) / CONTROL_DIR} ({e.strerror}): the job "
                f"must name a control group the requester is in ({CONTROL_GROUP_ENV})")
    return None


def prior_request(run_dir: str | Path, request_id: str) -> dict[str, Any] | None:
    """Return what request ``request_id`` asked for and how far it got, or None if absent.

    ``{"status", "to_step", "skip"}``; a requester that restarts after a crash, or retries,
    asks for the same rollback again under the same id rather than a second one.
    """
    state = status(run_dir, request_id)
    if state == "absent":
        return None
    req = _existing(Path(run_dir), request_id)
    if req is not None:
        return {"status": state, "to_step": req.to_step, "skip": [list(r) for r in req.skip]}
    result = read_result(run_dir, request_id) or {}
    return {"status": state, "to_step": result.get("to_step"), "skip": result.get("skip", [])}
