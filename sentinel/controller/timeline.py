"""A job's step stream as timelines, and the batches its steps trained on.

A job that rolled back reports steps it reported before: its stream holds several
timelines, each starting where the step number went back (a resume from a checkpoint).
The history that led to a given record is its *lineage*: its own timeline, and before
that timeline's first step the timelines it branched from. Mapping a spike's steps to
batch ids must read that lineage, not the newest record of each step: after one
rollback, step 160 of the new timeline trained another batch than step 160 of the old.

Only the lowest rank's records are read: every rank reports the same global batch index
for a step, and one record per step keeps the timelines unambiguous when ranks report
slightly out of order.
"""

from __future__ import annotations

from collections.abc import Iterable

from sentinel.rules.window import StepPoint


class TimelineError(ValueError):
    """The stream cannot say which batches a step trained on; the message says why."""


def lowest_rank(points: Iterable[StepPoint]) -> list[StepPoint]:
    """Return the records of the lowest rank in the stream (no rank counts as rank 0)."""
    pts = list(points)
    if not pts:
        return []
    low = min(p.rank or 0 for p in pts)
    return [p for p in pts if (p.rank or 0) == low]


def timelines(points: Iterable[StepPoint]) -> list[list[StepPoint]]:
    """Split one rank's records (arrival order) where the step number goes back."""
    out: list[list[StepPoint]] = []
    for p in points:
        if not out or p.step <= out[-1][-1].step:
            out.append([])
        out[-1].append(p)
    return out


def _containing(tls: list[list[StepPoint]], step: int, time: float | None) -> int:
    """Return the index of the timeline whose record of ``step`` is the one meant."""
    hits = [(i, p) for i, tl in enumerate(tls) for p in tl if p.step == step]
    if not hits:
        raise TimelineError(f"step {step} is not in the job's step stream (steps "
                            f"{_span(tls)}); the agent keeps the newest 20,000 per job")
    if time is None or all(p.time is None for _, p in hits):
        return hits[-1][0]
    return min(hits, key=lambda h: abs((h[1].time or 0.0) - time))[0]


def _span(tls: list[list[StepPoint]]) -> str:
    if not tls:
        return "none"
    return ", ".join(f"{tl[0].step}-{tl[-1].step}" for tl in tls)


def lineage(points: Iterable[StepPoint], step: int, time: float | None = None
            ) -> list[StepPoint]:
    """Return the history that led to the record of ``step`` at (about) ``time``, by step.

    ``time`` picks among several records of the step (one per timeline); without it the
    newest timeline that has the step is meant.
    """
    tls = timelines(lowest_rank(points))
    k = _containing(tls, step, time)
    chain: dict[int, StepPoint] = {}
    for tl in tls[: k + 1]:
        start = tl[0].step
        chain = {s: p for s, p in chain.items() if s < start}
        chain.update((p.step, p) for p in tl)
    return [chain[s] for s in sorted(chain)]


def batches(chain: list[StepPoint], lo: int, hi: int) -> set[int]:
    """Return the global batch ids steps ``lo..hi`` (inclusive) trained on in ``chain``.

    A step the stream lacks (a dropped report) between two known ones is filled in
    exactly when the batch ids between them are contiguous; otherwise every batch id
    between them is taken (those already skipped are subtracted later). Steps after the
    newest record (not run yet) continue its batch ids one per step.
    """
    known = [p for p in chain if p.batch is not None]
    if not known:
        raise TimelineError("the job reports no batch ids (Reporter.step(batch=...)): the "
                            "batches to skip cannot be known")
    if any(lo <= p.step <= hi and p.batch is None for p in chain):
        raise TimelineError("the job did not report the batch id of every step in "
                            f"{lo}-{hi}: the batches to skip cannot be known")
    out: set[int] = set()
    for p, q in zip(known, known[1:], strict=False):
        if q.step < lo or p.step > hi:
            continue
        if lo <= p.step <= hi:
            out.add(int(p.batch or 0))
        missing = range(max(lo, p.step + 1), min(hi, q.step - 1) + 1)
        if missing:
            pb, qb = int(p.batch or 0), int(q.batch or 0)
            if qb - pb == q.step - p.step:
                out.update(pb + (s - p.step) for s in missing)
            else:
                out.update(range(pb + 1, qb))
    first, last = known[0], known[-1]
    if lo <= last.step <= hi:
        out.add(int(last.batch or 0))
    out.update(int(last.batch or 0) + s - last.step for s in range(max(lo, last.step + 1), hi + 1))
    out.update(b for s in range(lo, min(hi + 1, first.step))
               if (b := int(first.batch or 0) - (first.step - s)) >= 0)
    return out


def to_ranges(ids: Iterable[int], minus: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Return ``ids`` less the half-open ranges ``minus``, as sorted half-open ranges."""
    gone = list(minus)
    keep = sorted(b for b in set(ids) if b >= 0 and not any(a <= b < e for a, e in gone))
    out: list[tuple[int, int]] = []
    for b in keep:
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


def after(points: Iterable[StepPoint], time: float) -> list[StepPoint]:
    """Return the lowest rank's records reported after ``time`` (a resume's timeline)."""
    return [p for p in lowest_rank(points) if p.time is not None and p.time > time]


def newest(points: Iterable[StepPoint]) -> StepPoint | None:
    """Return the lowest rank's newest record, or None for an empty stream."""
    pts = lowest_rank(points)
    return pts[-1] if pts else None
