"""Per-job training state fed by step datagrams: bounded rings, rates, histograms.

Everything here is bounded: at most ``max_jobs`` jobs, ``max_ranks_per_job`` ranks per
job, ``step_ring_size`` step records per job, and a rate window that is pruned by time
and capped in length. Reports beyond a bound are dropped and counted by reason.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.protocol import (
    DROP_REASONS,
    EVENT_FINISHED,
    EXTRA_BATCH,
    EXTRA_REPORTER_DROPPED,
    EventReport,
    StepReport,
)

log = logging.getLogger(__name__)

# Drops the agent adds to the protocol's decode reasons (documented in docs/METRICS.md).
AGENT_DROP_REASONS = ("too_many_jobs", "too_many_ranks", "queue_full")
ALL_DROP_REASONS = DROP_REASONS + AGENT_DROP_REASONS

# Step times of real runs span ~50 ms (small models) to minutes (huge ones, or a stall).
STEP_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                         120.0, 300.0)
# Upper bound on rate-window entries per rank, whatever the step rate: 100 steps/s for
# a 30 s window is 3000; beyond this the oldest entries fall out early.
MAX_RATE_ENTRIES = 4096
MAX_EVENT_KINDS = 32
# A job whose ranks all finished on purpose is kept this long, so a rules engine polling
# the step stream still reads its last steps, then forgotten.
FINISHED_GRACE_S = 120.0
# Extras travel as JSON numbers and are decoded as floats: above 2**53 a float cannot
# name every integer, so no exact batch index lies there (and no run comes near it).
MAX_BATCH_INDEX = 2**53


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
    first_seen: float
    step: int = -1
    loss: float = math.nan
    grad_norm: float | None = None
    tokens_total: int = 0
    samples_total: int = 0
    last_seen: float = 0.0
    last_report_time: float | None = None
    last_step: int | None = None
    # (monotonic receive time, tokens) of recent reports, for tokens/sec.
    window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_RATE_ENTRIES))
    bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(STEP_DURATION_BUCKETS) + 1)
    )
    duration_sum: float = 0.0
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
    """One job on this node: its ranks and its ring of recent step records."""

    ring: deque[dict[str, Any]]
    ranks: dict[int, RankState] = field(default_factory=dict)
    last_seen: float = 0.0


class StepStore:
    """Thread-safe state of the training jobs reporting to this agent."""

    def __init__(
        self,
        *,
        ring_size: int = 20000,
        max_jobs: int = 16,
        max_ranks: int = 64,
        rate_window: float = 30.0,
        expiry: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ring_size = ring_size
        self.max_jobs = max_jobs
        self.max_ranks = max_ranks
        self.rate_window = rate_window
        self.expiry = expiry
        self.monotonic = monotonic
        self.jobs: dict[str, JobState] = {}
        self.received = 0
        self.dropped: dict[str, int] = dict.fromkeys(ALL_DROP_REASONS, 0)
        self.lock = threading.Lock()

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped datagrams under ``reason``."""
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _rank(self, report: StepReport | EventReport, now: float) -> RankState | None:
        ident = report.identity
        job = self.jobs.get(ident.job)
        if job is None:
            if len(self.jobs) >= self.max_jobs:
                self._expire_locked(now)
            if len(self.jobs) >= self.max_jobs:
                self.dropped["too_many_jobs"] += 1
                return None
            job = JobState(ring=deque(maxlen=self.ring_size))
            self.jobs[ident.job] = job
        rank = job.ranks.get(ident.rank)
        if rank is None:
            if len(job.ranks) >= self.max_ranks:
                self.dropped["too_many_ranks"] += 1
                return None
            rank = RankState(pid=ident.pid, gpu_uuid=ident.gpu_uuid or "", host=ident.host,
                             first_seen=now)
            job.ranks[ident.rank] = rank
        else:
            # A restarted rank keeps its series but shows its new process and GPU.
            rank.pid, rank.host = ident.pid, ident.host
            rank.gpu_uuid = ident.gpu_uuid or rank.gpu_uuid
        job.last_seen = now
        rank.last_seen = now
        return rank

    def add(self, report: StepReport | EventReport) -> bool:
        """Apply one decoded report; False if a bound made the agent drop it."""
        now = self.monotonic()
        with self.lock:
            rank = self._rank(report, now)
            if rank is None:
                return False
            self.received += 1
            if isinstance(report, EventReport):
                if report.kind in rank.events or len(rank.events) < MAX_EVENT_KINDS:
                    rank.events[report.kind] = rank.events.get(report.kind, 0) + 1
                if report.kind == EVENT_FINISHED:
                    rank.finished_at = now
                return True
            rank.finished_at = None  # reporting steps again: running
            job = self.jobs[report.identity.job]
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
            rank.window.append((now, report.tokens))
            told = report.extra.get(EXTRA_REPORTER_DROPPED)
            if told is not None and told >= 0:
                if rank.reporter_dropped_pid != report.identity.pid:
                    rank.reporter_dropped_base += rank.reporter_dropped_last
                    rank.reporter_dropped_last = 0
                    rank.reporter_dropped_pid = report.identity.pid
                rank.reporter_dropped_last = max(rank.reporter_dropped_last, int(told))
            job.ring.append(
                {
                    "step": report.step,
                    "rank": report.identity.rank,
                    "loss": report.loss,
                    "grad_norm": report.grad_norm,
                    "tokens": report.tokens,
                    "samples": report.samples,
                    "time": report.time,
                    "host": report.identity.host,
                    "batch": self._batch(report, rank),
                }
            )
            return True

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
        cutoff = now - self.rate_window
        while rank.window and rank.window[0][0] <= cutoff:
            rank.window.popleft()
        if len(rank.window) == rank.window.maxlen and len(rank.window) > 1:
            # The entry cap pushed reports out before they left the window: dividing by
            # the full window would understate the rate, so use the span the entries
            # cover (the oldest entry's tokens belong to the time before that span).
            oldest, oldest_tokens = rank.window[0]
            covered = now - oldest
            if covered <= 0:
                return 0.0
            return (sum(t for _, t in rank.window) - oldest_tokens) / covered
        span = min(self.rate_window, now - rank.first_seen)
        if span <= 0:
            return 0.0
        return sum(t for _, t in rank.window) / span

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

    def steps(self, job: str, since: int, rank: int | None = None) -> list[dict[str, Any]]:
        """Return the ring's records of ``job`` with step >= since, by (step, rank).

        Returns copies: callers (the HTTP handler) rewrite NaN for JSON, and the ring's
        own records must keep their float values. Raises KeyError if the job is unknown.
        """
        with self.lock:
            state = self.jobs[job]
            recs = [
                dict(r) for r in state.ring
                if r["step"] >= since and (rank is None or r["rank"] == rank)
            ]
        recs.sort(key=lambda r: (r["step"], r["rank"]))
        return recs

    def job_names(self) -> list[str]:
        """Return the names of the jobs known now."""
        with self.lock:
            return sorted(self.jobs)
