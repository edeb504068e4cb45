"""Goodput and MTTR: where each second of a training job went, and how fast incidents healed.

Per job, from one rank's step records in time order (rank 0 where ranks are reported),
every second of wall time since the first record is either productive or charged to one
cause, so ``productive + sum(badput) + pending == wall`` holds at every moment:

- ``rollback``: the job went back to an earlier step (a step number repeats) while a
  ``rollback_skip`` action of the job ran: the steps rerun, at the time each took the
  first time (from the timeline of recent steps; steps older than the timeline at the
  baseline step time), plus the gap from the last step before to the first step after
  (the restore; the request falls inside the last step before, which is among the lost).
- ``requeue``: the same during a ``spare_swap`` (the job requeued onto a new node set):
  queue wait and restart, and the steps since its last checkpoint.
- ``restart``: the same with no action of the controller's (a person or the scheduler
  restarted the job from an earlier checkpoint).
- ``checkpoint``: the excess over the baseline of a step interval at a checkpoint step.
- ``stall``: the excess of any other interval longer than ``OUTLIER_FACTOR`` x baseline.
- ``throughput_drop``: while a throughput-drop incident of the job is open, each step's
  time beyond the job's own baseline before the drop began (time x the lost fraction).

The baseline is the median step time of the last ``BASELINE_STEPS`` ordinary intervals.
Checkpoint steps are found in the stream itself: pauses that recur every ``P`` steps
(three of them ``P`` apart) are checkpoint saves (docs/DESIGN.md says why not the
manifest). A pause seen before its period is known waits, as ``pending``, until it is
(at most ``PENDING_MAX`` pauses or ``PENDING_MAX_SECONDS``), then counts as a stall.

Each charge names the incident and action that caused or ended it. :func:`advance` is
pure (no clock, no I/O: it updates the state it is given and returns the charges);
:class:`GoodputAccountant` is the loop's side: each cycle it feeds the new records of
each followed job and journals the charges and the state in one transaction, so a
restarted controller resumes where it stopped and never charges a second twice.

Per incident (:func:`incident_times`): time to detect (the problem's start -> incident
opened), to decide (opened -> first decision) and to recover (the problem's start ->
verified: the MTTR, which includes the other two).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.controller.journal import Journal
from sentinel.controller.model import ACTION_UNFINISHED, Incident
from sentinel.rules.window import StepPoint

log = logging.getLogger(__name__)

CAUSES = ("rollback", "requeue", "restart", "checkpoint", "stall", "throughput_drop")
# What a rerun or gap during each action is charged to.
ACTION_CAUSE = {"rollback_skip": "rollback", "spare_swap": "requeue"}
DROP_KINDS = ("throughput_drop",)
STALL_KINDS = ("job_stalled",)

# An interval over 3x the baseline is a pause, not jitter: in the four real H100 runs
# (bench/detectors/curves/real, 12-14 ms steps) 99% of ordinary intervals stay under
# 2.9x their median and the checkpoint+eval pauses are 9-11x. Slower steps below it are
# productive unless a throughput-drop incident is open.
OUTLIER_FACTOR = 3.0
# Ordinary intervals in the rolling median: enough to ride out jitter, short enough to
# follow a job whose step time changes (sequence-length warm-up).
BASELINE_STEPS = 100
# Below this many ordinary intervals there is no baseline: every interval is productive.
MIN_BASELINE_STEPS = 5
# Nobody saves a checkpoint more often than every 10 steps; shorter "periods" are runs of
# slow steps (a GC pause spread over three steps).
MIN_CHECKPOINT_PERIOD = 10
# Pause steps remembered to find the checkpoint period.
OUTLIER_HISTORY = 32
# Pauses waiting for the period before the oldest is charged as a stall; and how long one
# may wait (three checkpoint intervals of an hour or so).
PENDING_MAX = 4
PENDING_MAX_SECONDS = 4 * 3600.0
# Steps whose times are kept to charge a rerun at measured times: a rollback goes back at
# most policy.max_rollback_steps (2,000) and a requeue to the last checkpoint.
TIMELINE_STEPS = 4096
# Events described in one charge's note (the rest are counted).
NOTE_MAX = 5
# The journal's and the job's clocks are different machines' clocks (NTP keeps them within
# milliseconds): an action's span is widened by this much, and the journal is asked for
# actions and incidents updated since a minute before the records.
CLOCK_SKEW_S = 2.0
LOOKBACK_S = 60.0


@dataclass(frozen=True)
class Span:
    """A time the journal explains: an action running, an incident open (end None: still)."""

    start: float
    end: float | None
    cause: str
    incident_id: str | None = None
    action_id: str | None = None

    def overlaps(self, t0: float, t1: float) -> bool:
        """Whether the span meets the interval [t0, t1]."""
        return self.start <= t1 and (self.end is None or self.end >= t0)


@dataclass
class Context:
    """What the journal says about a job: its actions and incidents, as spans."""

    actions: list[Span] = field(default_factory=list)  # rollbacks, requeues
    drops: list[Span] = field(default_factory=list)    # throughput-drop incidents
    stalls: list[Span] = field(default_factory=list)   # job-stalled incidents


@dataclass(frozen=True)
class Charge:
    """Seconds of a job charged to a cause, an incident and an action (a ledger row)."""

    cause: str
    seconds: float
    key: str
    incident_id: str | None = None
    action_id: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the row as Journal.save_goodput takes it."""
        return {"cause": self.cause, "seconds": self.seconds, "key": self.key,
                "incident_id": self.incident_id, "action_id": self.action_id,
                "note": self.note}


@dataclass
class GoodputState:
    """One job's accounting so far, and what it needs to go on (saved in the journal)."""

    job: str
    rank: int | None = None
    start: float | None = None
    last_time: float | None = None
    last_step: int | None = None
    productive: float = 0.0
    badput: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0.0))
    baseline: deque[float] = field(default_factory=lambda: deque(maxlen=BASELINE_STEPS))
    outliers: list[int] = field(default_factory=list)
    period: tuple[int, int] | None = None               # (P, residue) of checkpoint steps
    pending: list[tuple[int, float, float, float]] = field(default_factory=list)
    # step -> [end time, productive seconds, steps the interval covered]; insertion order
    # is time order (records are fed in time order; a rerun deletes before it re-adds).
    timeline: dict[int, list[float]] = field(default_factory=dict)
    drops: dict[str, list[float]] = field(default_factory=dict)  # incident -> [ref, until]

    # -- derived ---------------------------------------------------------------------

    def step_time(self) -> float | None:
        """Return the baseline step time, or None before there is one."""
        if len(self.baseline) < MIN_BASELINE_STEPS:
            return None
        return float(statistics.median(self.baseline))

    @property
    def wall(self) -> float:
        """Return the seconds from the first record to the newest."""
        if self.start is None or self.last_time is None:
            return 0.0
        return self.last_time - self.start

    @property
    def pending_seconds(self) -> float:
        """Return the seconds of pauses not classified yet."""
        return sum(p[2] for p in self.pending)

    @property
    def ratio(self) -> float | None:
        """Return productive / wall (None before two records)."""
        return self.productive / self.wall if self.wall > 0 else None

    def summary(self) -> dict[str, Any]:
        """Return what status and metrics show: start, last, productive, pending, badput."""
        return {"start": self.start, "last": self.last_time, "productive": self.productive,
                "pending": self.pending_seconds, "badput": dict(self.badput)}

    # -- saved form ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Return the state as JSON (the journal keeps it between restarts)."""
        return {
            "job": self.job, "rank": self.rank, "start": self.start, "last_time": self.last_time,
            "last_step": self.last_step, "productive": self.productive,
            "badput": dict(self.badput), "baseline": list(self.baseline),
            "outliers": list(self.outliers),
            "period": list(self.period) if self.period else None,
            "pending": [list(p) for p in self.pending],
            "timeline": [[s, *e] for s, e in self.timeline.items()],
            "drops": {k: list(v) for k, v in self.drops.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GoodputState:
        """Rebuild a state from :meth:`to_json` output."""
        st = cls(job=str(d["job"]), rank=d.get("rank"), start=d.get("start"),
                 last_time=d.get("last_time"), last_step=d.get("last_step"),
                 productive=float(d.get("productive", 0.0)))
        st.badput.update({str(k): float(v) for k, v in (d.get("badput") or {}).items()})
        st.baseline.extend(float(x) for x in d.get("baseline") or [])
        st.outliers = [int(x) for x in d.get("outliers") or []]
        per = d.get("period")
        st.period = (int(per[0]), int(per[1])) if per else None
        st.pending = [(int(p[0]), float(p[1]), float(p[2]), float(p[3]))
                      for p in d.get("pending") or []]
        st.timeline = {int(e[0]): [float(e[1]), float(e[2]), float(e[3])]
                       for e in d.get("timeline") or []}
        st.drops = {str(k): [float(v[0]), float(v[1])] for k, v in (d.get("drops") or {}).items()}
        return st


class _Book:
    """Collect one batch's charges, one ledger row per (cause, incident, action)."""

    def __init__(self, state: GoodputState) -> None:
        self.state = state
        self.rows: dict[tuple[str, str | None, str | None], list[Any]] = {}

    def charge(self, cause: str, seconds: float, incident_id: str | None,
               action_id: str | None, note: str) -> None:
        if seconds <= 0:
            return
        self.state.badput[cause] = self.state.badput.get(cause, 0.0) + seconds
        row = self.rows.setdefault((cause, incident_id, action_id), [0.0, []])
        row[0] += seconds
        row[1].append(note)

    def charges(self) -> list[Charge]:
        t = self.state.last_time or 0.0
        out = []
        for (cause, inc, act), (seconds, notes) in self.rows.items():
            note = "; ".join(notes[:NOTE_MAX])
            if len(notes) > NOTE_MAX:
                note += f"; and {len(notes) - NOTE_MAX} more"
            key = f"{self.state.job}/{cause}/{inc or '-'}/{act or '-'}/{t:.6f}"
            out.append(Charge(cause=cause, seconds=seconds, key=key, incident_id=inc,
                              action_id=act, note=note))
        return out


def new_points(state: GoodputState, points: Iterable[StepPoint]) -> list[StepPoint]:
    """Return the records of the state's rank newer than its last one, in time order."""
    pts = [p for p in points if p.time is not None and math.isfinite(p.time)]
    if state.start is None and state.rank is None:
        ranks = [p.rank for p in pts if p.rank is not None]
        state.rank = min(ranks) if ranks else None
    last = state.last_time
    mine = [p for p in pts if p.rank == state.rank and (last is None or float(p.time or 0) > last)]
    return sorted(mine, key=lambda p: float(p.time or 0.0))


def advance(state: GoodputState, points: Iterable[StepPoint], ctx: Context) -> list[Charge]:
    """Account the records of ``points`` newer than the state's; return the new charges.

    Pure: updates ``state`` in place and reads nothing but its arguments.
    """
    book = _Book(state)
    for p in new_points(state, points):
        _record(state, p, ctx, book)
    if state.last_time is not None:
        _resolve_pending(state, ctx, book)
        _charge_drops(state, ctx, book)
    return book.charges()


def _cover(spans: Sequence[Span], t0: float, t1: float) -> Span | None:
    """Return the latest-starting span that meets [t0, t1], if any."""
    hits = [s for s in spans if s.overlaps(t0, t1)]
    return max(hits, key=lambda s: s.start) if hits else None


def _record(state: GoodputState, p: StepPoint, ctx: Context, book: _Book) -> None:
    t = float(p.time or 0.0)
    if state.last_time is None or state.last_step is None:
        state.start, state.last_time, state.last_step = t, t, p.step
        state.timeline[p.step] = [t, 0.0, 1.0]  # its interval lies before the start
        return
    t0, s0 = state.last_time, state.last_step
    d = t - t0
    if p.step == s0 and d == 0:
        return  # the same record twice
    if p.step <= s0:
        _rerun(state, p, t0, s0, d, ctx, book)
    else:
        _forward(state, p, t0, s0, d, ctx, book)
    state.last_time, state.last_step = t, p.step
    while len(state.timeline) > TIMELINE_STEPS:
        del state.timeline[next(iter(state.timeline))]


def _rerun(state: GoodputState, p: StepPoint, t0: float, s0: int, d: float, ctx: Context,
           book: _Book) -> None:
    """Charge a step that comes again: the steps since it were lost, and the gap."""
    lowest = min(state.timeline) if state.timeline else p.step
    lost, covered = 0.0, 0.0
    for step in [s for s in state.timeline if s >= p.step]:
        entry = state.timeline.pop(step)
        lost += entry[1]
        covered += entry[2]
    b = state.step_time() or 0.0
    span_steps = s0 - p.step + 1
    # Steps older than the timeline: at the baseline step time.
    missing = max(0, min(span_steps - int(covered), lowest - p.step))
    estimated = min(missing * b, max(0.0, state.productive - lost))
    moved = lost + estimated
    keep = min(d, b)
    state.productive += keep - moved
    state.timeline[p.step] = [float(p.time or 0.0), keep, 1.0]
    span = _cover(ctx.actions, t0, float(p.time or 0.0))
    cause = span.cause if span else "restart"
    note = (f"steps {p.step}-{s0} run again ({span_steps} steps, {moved:.3g} s"
            f"{', partly estimated' if missing else ''}) and {d - keep:.3g} s from step {s0} "
            "to the first step after")
    if span is not None:
        note += f" ({float(p.time or 0.0) - span.start:.3g} s after the action started)"
    book.charge(cause, moved + d - keep, span.incident_id if span else None,
                span.action_id if span else None, note)


def _is_checkpoint(period: tuple[int, int] | None, first: int, last: int) -> bool:
    """Whether a checkpoint step of ``period`` lies in [first, last]."""
    if period is None:
        return False
    p, r = period
    return first + (r - first) % p <= last


def _forward(state: GoodputState, p: StepPoint, t0: float, s0: int, d: float, ctx: Context,
             book: _Book) -> None:
    """Account an interval that moved forward by one step or more."""
    t = float(p.time or 0.0)
    k = p.step - s0
    b = state.step_time()
    if b is None or d <= OUTLIER_FACTOR * k * b:
        state.productive += d
        state.timeline[p.step] = [t, d, float(k)]
        state.baseline.append(d / k)
        return
    expected = k * b
    excess = d - expected
    state.productive += expected
    state.timeline[p.step] = [t, expected, float(k)]
    span = _cover(ctx.actions, t0, t)
    if _is_checkpoint(state.period, s0 + 1, p.step):
        book.charge("checkpoint", excess, None, None,
                    f"{excess:.3g} s pause before step {p.step}")
    elif span is not None:
        book.charge(span.cause, excess, span.incident_id, span.action_id,
                    f"{excess:.3g} s pause before step {p.step}")
    else:
        state.pending.append((p.step, t, excess, t0))
    state.outliers = (state.outliers + [p.step])[-OUTLIER_HISTORY:]
    state.period = infer_period(state.outliers)


def infer_period(steps: Sequence[int]) -> tuple[int, int] | None:
    """Return (P, residue) when pauses recur every P steps (three in a row), else None.

    Of the periods seen, the one most pauses fall on wins (the shorter on a tie): pauses
    at 50, 100, 150, 200 give (50, 0), never (100, 0).
    """
    seen = sorted(set(steps))
    have = set(seen)
    best: tuple[tuple[int, int], int, int] | None = None
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            per = b - a
            if per < MIN_CHECKPOINT_PERIOD or b + per not in have:
                continue
            r = a % per
            support = sum(1 for x in seen if x % per == r)
            rank = (support, -per)
            if best is None or rank > best[0]:
                best = (rank, per, r)
    return (best[1], best[2]) if best else None


def _resolve_pending(state: GoodputState, ctx: Context, book: _Book) -> None:
    """Classify the pauses that waited for the checkpoint period."""
    now = state.last_time or 0.0
    keep: list[tuple[int, float, float, float]] = []
    for i, (step, t, excess, t0) in enumerate(state.pending):
        left = len(state.pending) - i
        if _is_checkpoint(state.period, step, step):
            book.charge("checkpoint", excess, None, None, f"{excess:.3g} s pause before step "
                        f"{step} (checkpoint every {state.period[0] if state.period else '?'})")
        elif state.period is not None or left > PENDING_MAX or now - t > PENDING_MAX_SECONDS:
            inc = _cover(ctx.stalls, t0, t)
            book.charge("stall", excess, inc.incident_id if inc else None,
                        inc.action_id if inc else None,
                        f"{excess:.3g} s without a step before step {step}")
        else:
            keep.append((step, t, excess, t0))
    state.pending = keep


def _baseline_before(state: GoodputState, t: float) -> float | None:
    """Return the median step time of the timeline's last steps that ended before ``t``."""
    per_step: list[float] = []
    for e in reversed(state.timeline.values()):
        if e[0] < t and e[2] > 0 and e[1] > 0:
            per_step.append(e[1] / e[2])
            if len(per_step) >= BASELINE_STEPS:
                break
    if len(per_step) < MIN_BASELINE_STEPS:
        return None
    return float(statistics.median(per_step))


def _charge_drops(state: GoodputState, ctx: Context, book: _Book) -> None:
    """Charge each step's time beyond the pre-drop baseline while a drop incident is open."""
    assert state.start is not None and state.last_time is not None
    for span in ctx.drops:
        key = span.incident_id or f"t{span.start:.0f}"
        ref = state.drops.get(key)
        if ref is None:
            b_ref = _baseline_before(state, span.start) or state.step_time()
            if b_ref is None:
                continue
            ref = state.drops[key] = [b_ref, max(span.start, state.start)]
        b_ref, until = ref
        end = state.last_time if span.end is None else min(span.end, state.last_time)
        if end <= until:
            continue
        moved, steps = 0.0, 0
        for e in reversed(state.timeline.values()):
            if e[0] <= until:
                break
            cap = e[2] * b_ref
            if e[0] <= end and e[1] > cap:
                moved += e[1] - cap
                steps += int(e[2])
                e[1] = cap
        ref[1] = end
        state.productive -= moved
        book.charge("throughput_drop", moved, span.incident_id, span.action_id,
                    f"{moved:.3g} s over {steps} slow steps against the job's {b_ref:.3g} s "
                    "baseline")
    live = {s.incident_id or f"t{s.start:.0f}" for s in ctx.drops}
    state.drops = {k: v for k, v in state.drops.items() if k in live}


# -- incidents -------------------------------------------------------------------------

@dataclass(frozen=True)
class IncidentTimes:
    """How long an incident took to detect, to decide about, and to recover (MTTR)."""

    detect: float | None
    decide: float | None
    recover: float | None


def incident_times(inc: Incident) -> IncidentTimes:
    """Return time to detect, to decide and to recover (from the problem's start)."""
    start = inc.detected_at if inc.detected_at is not None else inc.opened_at
    start = min(start, inc.opened_at)  # a finding's start after its incident's: clock skew

    def since(a: float, b: float | None) -> float | None:
        return None if b is None else max(0.0, b - a)

    return IncidentTimes(detect=since(start, inc.opened_at),
                         decide=since(inc.opened_at, inc.decided_at),
                         recover=since(start, inc.recovered_at))


# -- the loop's side -------------------------------------------------------------------

def _incident_span(inc: Incident, cause: str, action_id: str | None) -> Span:
    start = inc.detected_at if inc.detected_at is not None else inc.opened_at
    end: float | None = None
    if not inc.open:
        te = inc.finding.get("time_end")
        if isinstance(te, int | float) and not isinstance(te, bool) and math.isfinite(te):
            end = float(te)
        else:
            end = inc.recovered_at or inc.closed_at or inc.updated_at
    return Span(start=start, end=end, cause=cause, incident_id=inc.id, action_id=action_id)


def context_from_journal(journal: Journal, job: str, since: float) -> Context:
    """Return the spans of ``job``'s actions and incidents that may meet times after ``since``."""
    acts = {a.id: a for a in journal.actions(job=job, since=since - LOOKBACK_S)}
    acts.update({a.id: a for a in journal.actions(job=job, states=ACTION_UNFINISHED)})
    ctx = Context()
    for a in acts.values():
        cause = ACTION_CAUSE.get(a.action)
        if cause is None or a.mode != "act" or a.started_at is None:
            continue
        end = None if a.ended_at is None else a.ended_at + CLOCK_SKEW_S
        ctx.actions.append(Span(start=a.started_at - CLOCK_SKEW_S, end=end, cause=cause,
                                incident_id=a.incident_id, action_id=a.id))
    incs = {i.id: i for i in journal.incidents(job=job, since=since - LOOKBACK_S)}
    incs.update({i.id: i for i in journal.incidents(job=job, open_only=True)})
    for inc in incs.values():
        if inc.kind not in DROP_KINDS + STALL_KINDS:
            continue
        mine = [a for a in journal.actions(incident_id=inc.id) if a.mode == "act"]
        last = mine[-1].id if mine else None
        if inc.kind in DROP_KINDS:
            ctx.drops.append(_incident_span(inc, "throughput_drop", last))
        else:
            ctx.stalls.append(_incident_span(inc, "stall", last))
    return ctx


class GoodputAccountant:
    """Keep each followed job's goodput in the journal, a cycle at a time (the loop's side)."""

    def __init__(self, journal: Journal, jobs: Callable[[], Iterable[str]],
                 steps_of: Callable[[str], list[StepPoint]]) -> None:
        self.journal = journal
        self.jobs = jobs
        self.steps_of = steps_of
        self._states: dict[str, GoodputState] = {}

    def state(self, job: str) -> GoodputState:
        """Return the job's state (from the journal after a restart)."""
        st = self._states.get(job)
        if st is None:
            saved = self.journal.goodput_state(job)
            st = GoodputState.from_json(saved) if saved else GoodputState(job=job)
            self._states[job] = st
        return st

    def cycle(self, now: float) -> list[str]:
        """Account every followed job's new step records; return the errors, if any."""
        errors = []
        for job in self.jobs():
            try:
                self._account(job, now)
            except Exception as e:  # noqa: BLE001 - one job's bad data must not stop the rest
                log.exception("goodput of job %s: cannot account it", job)
                self._states.pop(job, None)  # start again from what the journal kept
                errors.append(f"goodput {job}: {type(e).__name__}: {e}")
        return errors

    def _account(self, job: str, now: float) -> None:
        try:
            points = self.steps_of(job)
        except KeyError:
            return  # not followed through a step stream
        st = self.state(job)
        fresh = new_points(st, points)
        if not fresh:
            return
        since = st.last_time if st.last_time is not None else float(fresh[0].time or 0.0)
        charges = advance(st, fresh, context_from_journal(self.journal, job, since))
        self.journal.save_goodput(job, st.summary(), st.to_json(),
                                  [c.to_dict() for c in charges], now)
