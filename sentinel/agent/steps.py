"""Per-job training state fed by step datagrams: bounded rings, rates, histograms.

Everything here is bounded, in bytes and not only in counts: at most ``max_jobs`` jobs
(``max_jobs_per_uid`` of them per sender), ``max_ranks_per_job`` ranks per job,
``step_ring_size`` packed step records per job (``sentinel.agent.ring``), a fixed
number of rate counters per rank, and identity strings of bounded length (the
protocol refuses longer ones). Reports beyond a bound are dropped and counted by
reason, and logged at most once a minute per reason.

A job belongs to the sender that first reported it, until it is forgotten: the uid
the kernel gave with its datagrams on the Unix socket, or :data:`UDP` for reports
that came over UDP (which carry no credentials). Reports for it from anyone else are
dropped as ``not_owner``.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.agent.ring import Record, Row, StepRing, TokenRate, as_record, rows
from sentinel.protocol import (
    DROP_REASONS,
    EVENT_FINISHED,
    EXTRA_BATCH,
    EXTRA_DATA_S,
    EXTRA_REPORTER_DROPPED,
    EventReport,
    StepReport,
)
from sentinel.ratelog import LogLimiter

log = logging.getLogger(__name__)

# Drops the agent adds to the protocol's decode reasons (documented in docs/METRICS.md).
AGENT_DROP_REASONS = ("too_many_jobs", "too_many_ranks", "queue_full", "not_allowed",
                      "not_owner", "over_quota", "no_credentials", "internal_error")
ALL_DROP_REASONS = DROP_REASONS + AGENT_DROP_REASONS
# The sender of reports that came over UDP: no credentials, so all of them are one.
UDP = None
# How often a drop reason may write a log line (the counters have every drop).
DROP_LOG_INTERVAL_S = 60.0

# Step times of real runs span ~50 ms (small models) to minutes (huge ones, or a stall).
STEP_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                         120.0, 300.0)
MAX_EVENT_KINDS = 32
# A job whose ranks all finished on purpose is kept this long, so a rules engine polling
# the step stream still reads its last steps, then forgotten.
FINISHED_GRACE_S = 120.0
# Extras travel as JSON numbers and are decoded as floats: above 2**53 a float cannot
# name every integer, so no exact batch index lies there (and no run comes near it).
MAX_BATCH_INDEX = 2**53
# A reported drop count above this is not a count (the Reporter's is a Python int of
# reports this process dropped; 2**53 is where floats stop being exact).
MAX_REPORTER_DROPPED = 2**53


def batch_index(value: float | None) -> int | None:
    """Return the batch index a step's ``batch`` extra names, or None if it names none.

    Valid: a whole number from 0 to MAX_BATCH_INDEX. Anything else (3.5, -1, NaN, 1e300)
    is not an index; the step is kept without one.
    """
    if value is None or not math.isfinite(value) or value != int(value):
        return None
    return int(value) if 0 <= value <= MAX_BATCH_INDEX else None


@dataclass
class RankState:
    """What the agent knows about one rank of one job."""

    pid: int
    gpu_uuid: str
    host: str
    first_seen: float  # or when it reported steps again after finishing (the rate's start)
    rate: TokenRate
    step: int = -1
    loss: float = math.nan
    grad_norm: float | None = None
    tokens_total: int = 0
    samples_total: int = 0
    last_seen: float = 0.0
    last_report_time: float | None = None
    last_step: int | None = None
    bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(STEP_DURATION_BUCKETS) + 1)
    )
    duration_sum: float = 0.0
    # Seconds the rank's steps waited for their input (Reporter.step(data_s=)), and how
    # many steps said so.
    data_wait_sum: float = 0.0
    data_wait_steps: int = 0
    events: dict[str, int] = field(default_factory=dict)
    # Reports the job's Reporter says it dropped on its side: a per-process count, kept
    # monotonic across process restarts as base (earlier processes) + last (this one).
    reporter_dropped_base: int = 0
    reporter_dropped_last: int = 0
    reporter_dropped_pid: int = -1
    # Agent clock when the rank said it finished on purpose; None while it runs.
    finished_at: float | None = None
    # Whether a bad batch index from this rank was logged (once per rank, not per step).
    bad_batch_logged: bool = False


@dataclass
class JobState:
    """One job on this node: its owner, its ranks and its ring of recent step records."""

    ring: StepRing
    owner: int | None  # the uid whose reports created it; UDP (None) for UDP reports
    ranks: dict[int, RankState] = field(default_factory=dict)
    last_seen: float = 0.0
    seq: int = 0  # arrival number of the next step record


# A position in a job's step records as /api/v1/steps pages them: (step, rank, seq).
Cursor = tuple[int, int, int]
# The cursor of a raw ring row (sentinel.agent.ring.Row: seq, step, rank, ...).
_cursor: Callable[[Row], Cursor] = operator.itemgetter(1, 2, 0)


class StepStore:
    """Thread-safe state of the training jobs reporting to this agent."""

    def __init__(
        self,
        *,
        ring_size: int = 20000,
        max_jobs: int = 16,
        max_ranks: int = 64,
        max_jobs_per_uid: int | None = None,
        rate_window: float = 30.0,
        expiry: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ring_size = ring_size
        self.max_jobs = max_jobs
        self.max_ranks = max_ranks
        self.max_jobs_per_uid = max_jobs if max_jobs_per_uid is None else max_jobs_per_uid
        self.rate_window = rate_window
        self.expiry = expiry
        self.monotonic = monotonic
        self.jobs: dict[str, JobState] = {}
        self.received = 0
        self.dropped: dict[str, int] = dict.fromkeys(ALL_DROP_REASONS, 0)
        self.lock = threading.Lock()
        self.drop_log = LogLimiter(log, DROP_LOG_INTERVAL_S, monotonic)

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None:
        """Count ``n`` dropped datagrams under ``reason``; log it at most once a minute."""
        with self.lock:
            self._drop_locked(reason, n, detail)

    def _drop_locked(self, reason: str, n: int = 1, detail: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        # The detail may quote what the sender wrote: keep a line a line.
        self.drop_log.log(logging.WARNING, reason, "dropped a report datagram: %s%s", reason,
                          f": {detail[:300]!s}" if detail else "")

    def _owned(self, uid: int | None) -> int:
        return sum(1 for j in self.jobs.values() if j.owner == uid)

    def _new_job(self, name: str, uid: int | None, now: float) -> JobState | None:
        if len(self.jobs) >= self.max_jobs or self._owned(uid) >= self.max_jobs_per_uid:
            self._expire_locked(now)
        if len(self.jobs) >= self.max_jobs:
            self._drop_locked("too_many_jobs", detail=f"{self.max_jobs} jobs already "
                              f"(agent.max_jobs); job {name!r} not started")
            return None
        if self._owned(uid) >= self.max_jobs_per_uid:
            self._drop_locked("over_quota", detail=f"{_who(uid)} already has "
                              f"{self.max_jobs_per_uid} jobs (agent.max_jobs_per_uid); "
                              f"job {name!r} not started")
            return None
        job = JobState(ring=StepRing(self.ring_size), owner=uid)
        self.jobs[name] = job
        return job

    def _rank(self, report: StepReport | EventReport, uid: int | None,
              now: float) -> RankState | None:
        ident = report.identity
        job = self.jobs.get(ident.job)
        if job is None:
            job = self._new_job(ident.job, uid, now)
            if job is None:
                return None
        elif job.owner != uid:
            self._drop_locked("not_owner", detail=f"job {ident.job!r} belongs to "
                              f"{_who(job.owner)}, the report came from {_who(uid)}")
            return None
        rank = job.ranks.get(ident.rank)
        if rank is None:
            if len(job.ranks) >= self.max_ranks:
                self._drop_locked("too_many_ranks", detail=f"job {ident.job!r} has "
                                  f"{self.max_ranks} ranks (agent.max_ranks_per_job)")
                return None
            rank = RankState(pid=ident.pid, gpu_uuid=ident.gpu_uuid or "", host=ident.host,
                             first_seen=now, rate=TokenRate(self.rate_window))
            job.ranks[ident.rank] = rank
        else:
            # A restarted rank keeps its series but shows its new process and GPU.
            rank.pid, rank.host = ident.pid, ident.host
            rank.gpu_uuid = ident.gpu_uuid or rank.gpu_uuid
        job.last_seen = now
        rank.last_seen = now
        return rank

    def add(self, report: StepReport | EventReport, uid: int | None = UDP) -> bool:
        """Apply one decoded report from sender ``uid``; False if the agent dropped it."""
        now = self.monotonic()
        with self.lock:
            rank = self._rank(report, uid, now)
            if rank is None:
                return False
            self.received += 1
            if isinstance(report, EventReport):
                if report.kind in rank.events or len(rank.events) < MAX_EVENT_KINDS:
                    rank.events[report.kind] = rank.events.get(report.kind, 0) + 1
                if report.kind == EVENT_FINISHED:
                    rank.finished_at = now
                return True
            if rank.finished_at is not None:
                # Running again (a requeued job, on this node again): its tokens/s counts
                # from now, not diluted over the rate window by the time it was stopped.
                rank.first_seen = now
            rank.finished_at = None  # reporting steps again: running
            job = self.jobs[report.identity.job]
            self._step(rank, report, now)
            wait = report.extra.get(EXTRA_DATA_S)
            job.ring.append(Record(job.seq, report.step, report.identity.rank, report.loss,
                                   report.grad_norm, report.tokens, report.samples,
                                   self._batch(report, rank), report.time,
                                   wait if wait is not None and wait >= 0 else None))
            job.seq += 1
            return True

    @staticmethod
    def _step(rank: RankState, report: StepReport, now: float) -> None:
        """Update a rank's live state (histogram, totals, rate, drops) from a step."""
        if (
            rank.last_report_time is not None
            and rank.last_step is not None
            and report.step > rank.last_step
        ):
            dt = report.time - rank.last_report_time
            if dt >= 0:
                rank.bucket_counts[bisect.bisect_left(STEP_DURATION_BUCKETS, dt)] += 1
                rank.duration_sum += dt
        rank.last_report_time = report.time
        rank.last_step = report.step
        rank.step = report.step
        rank.loss = report.loss
        rank.grad_norm = report.grad_norm
        rank.tokens_total += report.tokens
        if report.samples is not None:
            rank.samples_total += report.samples
        rank.rate.add(now, report.tokens)
        wait = report.extra.get(EXTRA_DATA_S)
        # The protocol refuses non-finite extras; a negative wait is a clock's mistake.
        if wait is not None and wait >= 0:
            rank.data_wait_sum += wait
            rank.data_wait_steps += 1
        told = report.extra.get(EXTRA_REPORTER_DROPPED)
        # The protocol refuses non-finite extras; the range check keeps int() exact.
        if told is not None and 0 <= told <= MAX_REPORTER_DROPPED:
            if rank.reporter_dropped_pid != report.identity.pid:
                rank.reporter_dropped_base += rank.reporter_dropped_last
                rank.reporter_dropped_last = 0
                rank.reporter_dropped_pid = report.identity.pid
            rank.reporter_dropped_last = max(rank.reporter_dropped_last, int(told))

    @staticmethod
    def _batch(report: StepReport, rank: RankState) -> int | None:
        """Return the report's batch index; log a bad one once per rank."""
        raw = report.extra.get(EXTRA_BATCH)
        batch = batch_index(raw)
        if raw is not None and batch is None and not rank.bad_batch_logged:
            rank.bad_batch_logged = True
            log.warning("job %s rank %d: step %d has %s=%r, which is not a batch index "
                        "(valid: a whole number 0..2**53); such steps are kept without one",
                        report.identity.job, report.identity.rank, report.step, EXTRA_BATCH,
                        raw)
        return batch

    def tokens_per_second(self, rank: RankState, now: float) -> float:
        """Tokens reported in the last window, over the window (or the rank's age)."""
        span = min(self.rate_window, now - rank.first_seen)
        if span <= 0:
            return 0.0
        return rank.rate.total(now) / span

    def _expire_locked(self, now: float) -> list[str]:
        gone = [
            j
            for j, s in self.jobs.items()
            if now - s.last_seen > self.expiry or self._finished_long_ago(s, now)
        ]
        for j in gone:
            del self.jobs[j]
        return gone

    @staticmethod
    def _finished_long_ago(job: JobState, now: float) -> bool:
        """Whether every rank finished on purpose over FINISHED_GRACE_S ago."""
        if not job.ranks:
            return False
        ends = [r.finished_at for r in job.ranks.values()]
        return all(e is not None and now - e > FINISHED_GRACE_S for e in ends)

    def expire(self) -> list[str]:
        """Forget jobs silent for longer than the expiry; return their names."""
        with self.lock:
            return self._expire_locked(self.monotonic())

    def page(self, job: str, since: int, rank: int | None = None, after: Cursor | None = None,
             limit: int | None = None) -> tuple[list[tuple[Cursor, dict[str, Any]]], bool]:
        """Return ``job``'s records with step >= since, after ``after``, by (step, rank).

        At most ``limit`` records (all when None), each with its cursor, and whether more
        follow. Records of one step and rank (a rolled-back job reports a step again)
        come in the order they arrived. The ring is copied under the lock as bytes and
        unpacked outside it, so a reader of the whole ring does not hold up the socket
        readers. Each record is a fresh dict: callers rewrite NaN for JSON, the ring keeps
        floats. A record's host is its rank's latest. Raises KeyError if the job is unknown.
        """
        with self.lock:
            state = self.jobs[job]
            snap = state.ring.snapshot()
            hosts = {r: st.host for r, st in state.ranks.items()}
        found = [row for row in rows(snap)
                 if row[1] >= since and (rank is None or row[2] == rank)]
        if after is not None:
            found = [row for row in found if _cursor(row) > after]
        if limit is None or len(found) <= limit:
            chosen, more = sorted(found, key=_cursor), False
        else:
            chosen, more = heapq.nsmallest(limit, found, key=_cursor), True
        return [(_cursor(row), _as_dict(as_record(row), hosts.get(row[2], "")))
                for row in chosen], more

    def steps(self, job: str, since: int, rank: int | None = None) -> list[dict[str, Any]]:
        """Return all of ``job``'s records with step >= since, by (step, rank) (see page)."""
        return [rec for _, rec in self.page(job, since, rank)[0]]

    def placement(self, job: str) -> tuple[str, set[str], dict[str, int]]:
        """Return where ``job`` runs: its ranks' host, the GPU UUIDs they report, and the
        ranks of every job per GPU UUID (KeyError if the job is unknown).
        """
        with self.lock:
            state = self.jobs[job]
            host = next((r.host for r in state.ranks.values() if r.host), "")
            gpus = {r.gpu_uuid for r in state.ranks.values() if r.gpu_uuid}
            ranks: dict[str, int] = {}
            for j in self.jobs.values():
                for r in j.ranks.values():
                    if r.gpu_uuid and r.finished_at is None:
                        ranks[r.gpu_uuid] = ranks.get(r.gpu_uuid, 0) + 1
        return host, gpus, ranks

    def job_names(self) -> list[str]:
        """Return the names of the jobs known now."""
        with self.lock:
            return sorted(self.jobs)


def _as_dict(r: Record, host: str) -> dict[str, Any]:
    return {"step": r.step, "rank": r.rank, "loss": r.loss, "grad_norm": r.grad_norm,
            "tokens": r.tokens, "samples": r.samples, "time": r.time, "host": host,
            "batch": r.batch, "data_s": r.data_s}


def _who(uid: int | None) -> str:
    return "UDP senders" if uid is UDP else f"uid {uid}"
