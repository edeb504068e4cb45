"""In-process rollback: signed requests in the run directory, applied at a step boundary.

The controller (or a person, through ``sentinel rollback``) writes a request into
``RUN_DIR/rollback/requests/ID.json``, signed with HMAC-SHA256 under the run's token
(``RUN_DIR/.sentinel/token``, created mode 0600 by the job), and sends the job SIGUSR1.
At its next step boundary the job calls :meth:`RollbackHandler.at_step_boundary`:

1. every rank says whether it saw a signal (one all-reduce of one integer on a gloo
   group, so no GPU synchronisation), and rank 0 also looks for requests now and
   then in case a signal was lost;
2. rank 0 checks the requests (signature, job, age, skip ranges) and broadcasts the
   chosen one, so every rank acts on the same request at the same boundary;
3. every rank reads and checksums the checkpoint, and all agree (all-reduce of "ok")
   before anyone changes its state: a checkpoint one rank cannot verify is refused by
   all, and nobody is left waiting in a collective;
4. every rank restores the state, adds the skip ranges, and reports ``rollback_done``;
   rank 0 persists the skip plan, marks newer checkpoints abandoned and writes
   ``RUN_DIR/rollback/results/ID.json``.

Requests with no or a wrong signature, and files that are not a request at all (junk
JSON, a number Python cannot hold, a FIFO, a huge file), are ignored and logged once
(renamed ``*.rejected``): no input makes a boundary check raise or hang. Requests that
cannot be honoured are refused: a result file and a ``rollback_refused`` event say why.
"""

from __future__ import annotations

import grp
import hmac
import logging
import os
import secrets
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from sentinel.train._atomic import write_json_atomic
from sentinel.train.checkpoint import CheckpointError, CheckpointInfo, CheckpointStore
from sentinel.train.request import (
    CONTROL_GROUP_ENV,
    REJECTED_SUFFIX,
    REQUEST_DIR,
    RESULT_DIR,
    ROLLBACK_SIGNAL,
    RollbackError,
    RollbackRequest,
    pid_dir,
    read_json_file,
    read_token,
    request_path,
    result_path,
    sign,
    token_path,
    write_pid_file,
)
from sentinel.train.skipplan import SkipPlan, SkipPlanError

log = logging.getLogger(__name__)

# A request older than this is stale: the spike it answered is long past, and acting
# on it now would throw away good training. An hour covers a slow human in the loop.
DEFAULT_MAX_REQUEST_AGE_S = 3600.0
# Requests written slightly "in the future" are tolerated up to this clock skew.
MAX_CLOCK_SKEW_S = 60.0
# Rank 0 lists the request directory at most this often even without a signal, so a
# lost signal delays a rollback by seconds, not forever; one listdir per interval.
DEFAULT_POLL_INTERVAL_S = 10.0
# Requests read per boundary: bounds the work a flood of junk files can cause.
MAX_REQUESTS_PER_CHECK = 16
# The token: the job's user's alone, or also readable by the job's control group.
TOKEN_MODE = 0o600
GROUP_TOKEN_MODE = 0o640
# With a control group: its members read the control directory (token, PIDs) and the
# results, and write requests; setgid so files made there (requests) get the group.
CONTROL_DIR_MODE = 0o2750
REQUEST_DIR_MODE = 0o2770
RESULT_DIR_MODE = 0o2750
# Junk files that could not be moved aside (another user's file in a shared directory)
# are remembered so that each is logged once; beyond this many the oldest are forgotten.
MAX_REMEMBERED_JUNK = 1024


class EventSink(Protocol):
    """What the handler needs from a Reporter."""

    def event(self, kind: str, **fields: Any) -> None:
        """Report an event."""


class HeldStates(Protocol):
    """What the handler needs from an AsyncCheckpointer: states held in host memory."""

    def get(self, step: int, entry: CheckpointInfo | None, map_location: Any = "cpu"
            ) -> dict[str, Any] | None:
        """Return a copy of the held state of ``step``, or None if not held."""

    def cancel_after(self, step: int) -> list[int]:
        """Call off writes of, and drop states of, steps after ``step``."""


# -- token (the job creates it; requesters read it) ------------------------------------
def control_gid(group: str | None) -> int | None:
    """Return the gid of the job's control group, or None when it names none.

    The group must exist and this process must be in it (only a member may give a file
    to a group); otherwise RollbackError says what to fix.
    """
    if not group:
        return None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise RollbackError(f"control group {group!r} ({CONTROL_GROUP_ENV}) does not exist; "
                            "create it, or unset it to keep the token to the job's user"
                            ) from None
    if os.geteuid() != 0 and gid not in (os.getegid(), *os.getgroups()):
        raise RollbackError(f"control group {group!r} ({CONTROL_GROUP_ENV}): this job's user "
                            f"(uid {os.geteuid()}) is not a member; add it, or unset it")
    return gid


def _own_dir(path: Path, gid: int | None, mode: int) -> None:
    """Create ``path`` (and parents); with a control group, give it that group and ``mode``."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700 if gid is None else mode)
    if gid is not None:
        st = path.stat()
        if st.st_uid == os.geteuid() and (st.st_gid != gid
                                          or stat.S_IMODE(st.st_mode) != mode):
            os.chown(path, -1, gid)
            os.chmod(path, mode)  # after chown: chown clears the setgid bit


def ensure_token(run_dir: str | Path, group: str | None = None) -> bytes:
    """Create the run's token if absent and return it; set its mode and group.

    Without ``group`` the token is 0600, the job's user's alone (a loose mode is
    tightened). With a control group (see :func:`control_gid`) it is 0640 and that
    group's, so its members (a controller running as another user) can sign requests.
    """
    gid = control_gid(group)
    path = token_path(run_dir)
    _own_dir(path.parent, gid, CONTROL_DIR_MODE)
    want = TOKEN_MODE if gid is None else GROUP_TOKEN_MODE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) != want or (gid is not None and st.st_gid != gid):
            if stat.S_IMODE(st.st_mode) & ~want:
                log.warning("token %s had mode %o, readable by more than intended; setting %o",
                            path, stat.S_IMODE(st.st_mode), want)
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, want)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, want)
    return read_token(run_dir)


# -- the job's side -------------------------------------------------------------------
@dataclass
class RollbackOutcome:
    """What a boundary check did: the request applied, and how long each phase took."""

    request: RollbackRequest
    from_step: int
    to_step: int
    read_s: float
    restore_s: float
    total_s: float
    source: str = "disk"  # where the state came from: "memory" (held) or "disk"


class RollbackHandler:
    """Apply signed rollback requests at step boundaries, on every rank together.

    ``restore(state)`` gets the checkpoint's state dict and must load it into the model,
    optimizer, scheduler, RNG and data iterator; the handler does the rest.
    Call :meth:`at_step_boundary` on every rank at the same steps (it is a collective
    when ``torch.distributed`` is initialised).
    """

    def __init__(
        self,
        run_dir: str | Path,
        job: str,
        store: CheckpointStore,
        skip_plan: SkipPlan,
        restore: Callable[[dict[str, Any]], None],
        reporter: EventSink | None = None,
        *,
        check_every: int = 1,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        max_request_age_s: float = DEFAULT_MAX_REQUEST_AGE_S,
        map_location: Any = "cpu",
        group: Any = None,
        now: Callable[[], float] = time.time,
        control_group: str | None = None,
        memory: HeldStates | None = None,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.run_dir = Path(run_dir)
        self.job = job
        self.store = store
        self.skip_plan = skip_plan
        self.restore = restore
        self.reporter = reporter
        self.check_every = check_every
        self.poll_interval_s = poll_interval_s
        self.max_request_age_s = max_request_age_s
        self.map_location = map_location
        self.now = now
        self.group = group
        # States held in host RAM (AsyncCheckpointer): a rollback to one reads no disk.
        self.memory = memory
        # Who besides the job's user may request a rollback (DESIGN.md, Controller ->
        # Security); from the environment so a launcher sets it for every rank.
        self.control_group = (control_group if control_group is not None
                              else os.environ.get(CONTROL_GROUP_ENV, "")) or None
        self.rank, self.world_size = 0, 1
        self._dist: Any = None
        self._token = b""
        self._signalled = False
        self._signalled_at: float | None = None
        self._next_poll = 0.0
        self._previous_handler: Any = None
        self._pid_file: Path | None = None
        self._junk: dict[str, None] = {}  # insertion-ordered set of unmovable junk files

    # -- set-up ---------------------------------------------------------------------
    def install(self) -> None:
        """Create the token, record this rank's PID, hook SIGUSR1 (collective if distributed)."""
        dist: Any
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is required to train anyway
            dist = None
        if dist is not None and dist.is_available() and dist.is_initialized():
            self._dist = dist
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            if self.group is None and dist.get_backend() != "gloo":
                # Control traffic goes over CPU so the check never syncs the GPU stream.
                self.group = dist.new_group(backend="gloo")
        if self.rank == 0:
            self._token = ensure_token(self.run_dir, self.control_group)
            # The job makes the request and result directories, so it may remove what
            # a requester of another user writes there.
            gid = control_gid(self.control_group)
            _own_dir(self.run_dir / REQUEST_DIR, gid, REQUEST_DIR_MODE)
            _own_dir(self.run_dir / RESULT_DIR, gid, RESULT_DIR_MODE)
            _own_dir(pid_dir(self.run_dir), gid, CONTROL_DIR_MODE)
        if self._dist is not None:
            self._dist.barrier(group=self.group)  # token exists before others read it
        if self.rank != 0:
            self._token = read_token(self.run_dir)
        self._pid_file = write_pid_file(self.run_dir, self.rank, self._token)
        self._previous_handler = signal.signal(ROLLBACK_SIGNAL, self._on_signal)

    def uninstall(self) -> None:
        """Restore the previous SIGUSR1 handler and remove this rank's PID file."""
        if self._previous_handler is not None:
            signal.signal(ROLLBACK_SIGNAL, self._previous_handler)
            self._previous_handler = None
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        # Only set a flag: the real work happens at the next step boundary.
        self._signalled = True
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()

    # -- collectives ------------------------------------------------------------------
    def _all_reduce_int(self, value: int, op: str) -> int:
        if self._dist is None:
            return value
        import torch

        t = torch.tensor([value], dtype=torch.int64)
        self._dist.all_reduce(t, op=getattr(self._dist.ReduceOp, op), group=self.group)
        return int(t.item())

    def _broadcast(self, obj: Any) -> Any:
        if self._dist is None:
            return obj
        box = [obj]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    # -- the boundary -----------------------------------------------------------------
    def at_step_boundary(self, step: int) -> RollbackOutcome | None:
        """Apply a pending rollback request, if any; return what was done.

        ``step`` is the step about to run. Returns None when nothing was applied.
        """
        if step % self.check_every:
            return None
        flag = 1 if self._signalled else 0
        if not flag and self.rank == 0 and self.now() >= self._next_poll:
            self._next_poll = self.now() + self.poll_interval_s
            flag = 1 if self._pending_files() else 0
        if not self._all_reduce_int(flag, "MAX"):
            return None
        started = self._signalled_at if self._signalled_at is not None else time.monotonic()
        self._signalled, self._signalled_at = False, None

        decision: dict[str, Any] | None = None
        if self.rank == 0:
            try:
                decision = self._choose(step)
            except Exception:  # noqa: BLE001 - other ranks wait in the broadcast below
                log.exception("could not read rollback requests; trying again later")
                decision = {"apply": None, "refused": []}
        decision = self._broadcast(decision)
        for rid, reason in decision["refused"]:
            self._report_refused(rid, reason, step)
        if decision["apply"] is None:
            return None
        req = RollbackRequest.from_json(decision["apply"])
        return self._apply(req, step, started)

    def _pending_files(self) -> list[Path]:
        d = self.run_dir / REQUEST_DIR
        try:
            files = [p for p in d.iterdir() if p.suffix == ".json" and p.name not in self._junk]
        except FileNotFoundError:
            return []
        return sorted(files)[:MAX_REQUESTS_PER_CHECK]

    def _choose(self, step: int) -> dict[str, Any]:
        """Check pending requests on rank 0; pick the first valid one, refuse bad ones."""
        refused: list[tuple[str, str]] = []
        valid: list[RollbackRequest] = []
        for path in self._pending_files():
            try:
                req = self._read(path)
            except Exception as e:  # noqa: BLE001 - one bad file must never block the rest
                self._reject(path, str(e) if isinstance(e, RollbackError)
                             else f"unreadable request ({type(e).__name__}: {e})")
                continue
            if req is None:
                continue
            reason = self._invalid(req)
            if reason:
                refused.append((req.id, reason))
                self._write_result(req, {"status": "refused", "reason": reason, "step": step})
                path.unlink(missing_ok=True)
                continue
            valid.append(req)
        valid.sort(key=lambda r: r.created)
        chosen = valid[0] if valid else None
        return {"apply": chosen.to_json() if chosen else None, "refused": refused}

    def _read(self, path: Path) -> RollbackRequest | None:
        """Return the signed request in ``path``, None if it vanished; RollbackError if bad."""
        try:
            raw = read_json_file(path, "rollback request")
        except FileNotFoundError:
            return None  # answered and removed, or withdrawn, since the listing
        if not isinstance(raw, dict) or "request" not in raw or set(raw) - {"request",
                                                                              "signature"}:
            raise RollbackError("not a rollback request (valid: {\"request\": {...}, "
                                "\"signature\": \"...\"} as sentinel rollback writes it)")
        req = RollbackRequest.from_json(raw["request"])
        sig = raw.get("signature")
        # Compare bytes: compare_digest raises TypeError on a non-ASCII str, and one
        # such junk file would then block every request behind it.
        if not isinstance(sig, str) or not hmac.compare_digest(
            sig.encode("utf-8"), sign(req, self._token).encode("ascii")
        ):
            raise RollbackError("missing or wrong signature (not signed with this run's token)")
        if path.stem != req.id or result_path(self.run_dir, req.id).exists():
            raise RollbackError(f"request id {req.id!r} does not match its file or was "
                                "already handled")
        return req

    def _invalid(self, req: RollbackRequest) -> str | None:
        if req.job != self.job:
            return f"request is for job {req.job!r}, this is job {self.job!r}"
        age = self.now() - req.created
        if age > self.max_request_age_s:
            return f"request is {age:.0f} s old (limit {self.max_request_age_s:.0f} s): stale"
        if age < -MAX_CLOCK_SKEW_S:
            return f"request is dated {-age:.0f} s in the future: check the clocks"
        if self.store.info(req.to_step) is None:
            steps = ", ".join(str(c.step) for c in self.store.checkpoints()) or "none"
            return f"no checkpoint for step {req.to_step} (available: {steps})"
        try:
            self.skip_plan.check(req.skip)
        except SkipPlanError as e:
            return f"bad skip ranges: {e}"
        return None

    def _reject(self, path: Path, why: str) -> None:
        """Log a bad request file once and move it aside (or, failing that, remember it)."""
        log.warning("ignoring rollback request %s: %s", path, why)
        try:
            path.rename(path.with_suffix(REJECTED_SUFFIX))
            return
        except OSError:
            pass
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            self._junk[path.name] = None
            while len(self._junk) > MAX_REMEMBERED_JUNK:
                del self._junk[next(iter(self._junk))]

    def _add_skips(self, req: RollbackRequest, step: int) -> None:
        """Add the request's ranges on rank 0 (saved) and give every rank rank 0's plan.

        Rank 0 reads the file again under its lock, so a range another writer added is
        kept; every rank then takes rank 0's ranges, so all ranks skip the same batches.
        """
        error = ""
        if self.rank == 0:
            try:
                self.skip_plan.add(req.skip, added_by=req.requested_by or "rollback",
                                   reason=f"rollback {req.id}: {req.reason}", save=True)
            except SkipPlanError as e:
                error = str(e)
        error, ranges = self._broadcast((error, self.skip_plan.to_json()))
        if error:
            if self.reporter is not None:
                self.reporter.event("rollback_failed", request_id=req.id, reason=error,
                                    step=step)
            raise RollbackError(f"rollback {req.id} to step {req.to_step} failed: the skip "
                                f"ranges were not saved ({error}); stopping so the job "
                                "restarts and applies it again")
        if self.rank != 0:
            self.skip_plan.replace(ranges)

    def _write_result(self, req: RollbackRequest, result: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        path = result_path(self.run_dir, req.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"id": req.id, "time": self.now(), **result})

    def _report_refused(self, request_id: str, reason: str, step: int) -> None:
        log.error("rollback request %s refused: %s", request_id, reason)
        if self.reporter is not None:
            self.reporter.event("rollback_refused", request_id=request_id, reason=reason,
                                step=step)

    def _target_state(self, to_step: int) -> tuple[dict[str, Any] | None, str, str]:
        """Return (state, "memory" or "disk", why not) for the rollback target."""
        try:
            entry = self.store.info(to_step)
            if self.memory is not None:
                held = self.memory.get(to_step, entry, self.map_location)
                if held is not None:
                    return held, "memory", ""
            # Deserialise before the vote too: a file that verifies but does not load
            # must be refused by all ranks, not raise on some after the others agreed.
            data = (self.store.read_verified_shard(to_step, self.rank, self.world_size)
                    if entry is not None and entry.shards
                    else self.store.read_verified(to_step))
            return self.store.deserialize(data, self.map_location), "disk", ""
        except CheckpointError as e:
            return None, "disk", str(e)

    def _apply(self, req: RollbackRequest, step: int, started: float) -> RollbackOutcome | None:
        t0 = time.monotonic()
        state, source, problem = self._target_state(req.to_step)
        t_read = time.monotonic()
        if not self._all_reduce_int(0 if state is None else 1, "MIN"):
            reason = problem or "another rank could not verify the checkpoint (see its log)"
            reason = f"rank {self.rank}: {reason}"
            self._write_result(req, {"status": "refused", "reason": reason, "step": step})
            if self.rank == 0:
                request_path(self.run_dir, req.id).unlink(missing_ok=True)
            self._report_refused(req.id, reason, step)
            return None
        assert state is not None
        restored = 1
        try:
            self.restore(state)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, not only this one
            restored = 0
            problem = f"restoring the checkpoint failed: {type(e).__name__}: {e}"
            log.error("rank %d: %s", self.rank, problem)
        del state
        # A second vote: a rank whose restore raised would otherwise leave the others
        # in their next collective, waiting for ever. Nothing is safe to continue from
        # (some ranks hold the old state, some the new): every rank stops. The request
        # stays pending and no checkpoint is abandoned, so the restarted job (a Slurm
        # requeue) resumes from its newest checkpoint and applies the request again.
        if not self._all_reduce_int(restored, "MIN"):
            reason = f"rank {self.rank}: " + (
                problem or "another rank failed to restore the checkpoint (see its log)")
            if self.reporter is not None:
                self.reporter.event("rollback_failed", request_id=req.id, reason=reason,
                                    step=step)
            raise RollbackError(f"rollback {req.id} to step {req.to_step} failed: {reason}; "
                                "stopping so the job restarts and applies it again")
        if self.memory is not None:
            # Before abandoning: a background write of the old timeline must not reach
            # the manifest after the abandon, as a live checkpoint.
            self.memory.cancel_after(req.to_step)
        if self.rank == 0:
            # Abandon the newer checkpoints before the skip plan is saved: a crash between
            # the two then restarts from ``to_step`` and re-applies the pending request.
            # The other order would restart past the spike with the ranges already in the
            # plan, and the re-found request would be refused as overlapping.
            self.store.abandon_after(req.to_step, f"rollback {req.id} from step {step}")
        self._add_skips(req, step)
        t_done = time.monotonic()
        outcome = RollbackOutcome(req, step, req.to_step, t_read - t0, t_done - t_read,
                                  t_done - started, source)
        if self.rank == 0:
            self._write_result(req, {
                "status": "done", "from_step": step, "to_step": req.to_step,
                "skip": [list(r) for r in req.skip], "read_s": outcome.read_s,
                "restore_s": outcome.restore_s, "total_s": outcome.total_s, "pid": os.getpid(),
                "source": source,
            })
            request_path(self.run_dir, req.id).unlink(missing_ok=True)
        log.info("rolled back from step %d to %d (request %s), skipping %s", step,
                 req.to_step, req.id, req.skip)
        if self.reporter is not None:
            self.reporter.event(
                "rollback_done", request_id=req.id, from_step=step, to_step=req.to_step,
                skipped_batches=sum(b - a for a, b in req.skip), read_s=outcome.read_s,
                restore_s=outcome.restore_s, total_s=outcome.total_s,
                request_age_s=self.now() - req.created, source=source,
            )
        return outcome
