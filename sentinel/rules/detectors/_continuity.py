"""Keep an episode's identity across evaluation cycles of a windowed detector.

A detector that reads a sliding window (a Prometheus range query of the last 10
minutes) finds an episode again every cycle. Its start, and with it the finding's key,
must not move with the window: a drop longer than the window would otherwise start at
the window's first sample each cycle (a "new" finding, the last one "resolved"), and
once the window no longer holds the samples before the drop, the baseline is taken
from inside the drop and the drop disappears while it lasts.

:func:`continue_episodes` takes the episodes found in the window and what the rule
run reported before (``Window.previous``): the open episode is continued from its own
start against its own baseline, over the window's samples from that start on, until
the samples are back; episodes found again that overlap one reported before are that
one, not new.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.rules.detectors._episodes import Episode, EpisodeFinder
from sentinel.rules.finding import Finding


@dataclass(frozen=True)
class Earlier:
    """An episode as a finding of an earlier cycle recorded it."""

    start: float
    end: float | None  # None while it was firing
    flagged: float | None
    baseline: float
    worst: float
    last_bad: float
    # The finding's evidence of what the nodes saw when it was flagged (its ``signals``):
    # judged once, on the drop's first seconds, and carried with the episode.
    signals: dict[str, Any] | None = None
    # Where the drop began, when this episode continued it under a new cause.
    since: float | None = None

    @property
    def span_end(self) -> float:
        """Return the episode's last known time."""
        return self.end if self.end is not None else self.last_bad

    def reopen(self) -> Episode:
        """Return the episode, still open, to resume a finder with."""
        return Episode(start=self.start, end=None, flagged=self.flagged,
                       baseline=self.baseline, worst=self.worst, last_bad=self.last_bad,
                       signals=self.signals, since=self.since)


def earlier(previous: list[Finding], scope: Callable[[Finding], bool], *,
            baseline: Callable[[Finding], float | None],
            worst: Callable[[Finding], float | None]) -> list[Earlier]:
    """Return the episodes of ``previous`` findings in ``scope`` (oldest first).

    A finding without a start, a baseline or a worst value (another version's output)
    is left out: it cannot be continued.
    """
    out: list[Earlier] = []
    for f in previous:
        if not scope(f) or f.time_start is None:
            continue
        b, w = baseline(f), worst(f)
        if b is None or w is None or not math.isfinite(b) or not math.isfinite(w):
            continue
        flagged = f.evidence.get("flagged_at")
        last = f.time_end if f.time_end is not None else f.time_start
        signals = f.evidence.get("signals")
        since = f.evidence.get("drop_start")
        out.append(Earlier(
            start=f.time_start, end=last if f.state == "resolved" else None,
            flagged=float(flagged) if isinstance(flagged, int | float) else f.time_start,
            baseline=b, worst=w, last_bad=last,
            signals=signals if isinstance(signals, dict) else None,
            since=float(since) if isinstance(since, int | float) else None))
    return sorted(out, key=lambda e: e.start)


def continue_episodes(
    points: list[tuple[float, float]], fresh: list[Episode], before: list[Earlier],
    new_finder: Callable[[float, Callable[[Episode], None]], EpisodeFinder],
) -> list[Episode]:
    """Return the window's episodes with those reported before kept as they were.

    ``fresh`` are the episodes found in the window alone, ``before`` the earlier
    cycles' (:func:`earlier`), ``new_finder(baseline, on_episode)`` a finder judging
    samples against a fixed ``baseline``. The newest earlier episode that was still
    open is fed the window's samples from its start on (all of them when it started
    before the window) and ends when they are back, whatever the window's own
    baseline says; fresh episodes overlapping it, or overlapping an earlier one that
    had ended, are dropped (they are those, found again). The rest are new.
    """
    open_ = [e for e in before if e.end is None]
    kept: list[Episode] = []
    covered: list[tuple[float, float]] = [(e.start, e.span_end) for e in before
                                          if e.end is not None]
    if open_:
        last = open_[-1]
        got: list[Episode] = []
        finder = new_finder(last.baseline, got.append)
        cont = last.reopen()
        finder.resume(cont)
        for t, v in points:
            if t < last.start:
                continue
            finder.feed(t, v)
            if got:  # it ended: what follows is judged by the window's own finder
                break
        finder.finish()
        ep = got[0] if got else cont
        kept.append(ep)
        covered.append((ep.start, ep.end if ep.end is not None else math.inf))
    for e in fresh:
        end = e.end if e.end is not None else math.inf
        if any(e.start <= hi and lo <= end for lo, hi in covered):
            continue
        kept.append(e)
    return sorted(kept, key=lambda e: e.start)
