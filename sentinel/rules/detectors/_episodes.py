"""Find sustained episodes (and short dips) in a time series against a baseline.

:class:`EpisodeFinder` takes samples one at a time (oldest first) and holds only the
baseline window and the sustain window, so it runs over a window of minutes or a run of
millions of samples alike; :func:`find_episodes` runs it over a list.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.rules.detectors._rolling import median

# A gap of more than this many sample steps without a sample breaks a run of samples.
MAX_GAP_STEPS = 3


@dataclass
class Episode:
    """A run of bad samples: sustained (``flagged`` set) or a short dip (not flagged)."""

    start: float
    end: float | None  # time of the first sample back to normal; None while ongoing
    flagged: float | None  # when it became sustained; None for a short dip
    baseline: float
    worst: float
    last_bad: float
    # Running sums of (t - start, value) over the samples fed while it was open, for the
    # least-squares trend of the values through it (a drop that keeps deepening).
    sums: list[float] = field(default_factory=lambda: [0.0] * 6, compare=False, repr=False)
    # The newest step seen when it was flagged, where the caller knows steps.
    flagged_step: int | None = field(default=None, compare=False)
    # What the caller found alongside when it was flagged (the throughput detector: what
    # the nodes saw, for the diagnosis); kept as the episode goes on.
    signals: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # Where the drop began when this episode continues it under a new cause (the
    # throughput detector splits a drop whose cause changed); None: at ``start``.
    since: float | None = field(default=None, compare=False)

    def add(self, t: float, v: float) -> None:
        """Count a sample fed while the episode is open into its trend."""
        x, s = t - self.start, self.sums
        s[0] += 1
        s[1] += x
        s[2] += v
        s[3] += x * x
        s[4] += x * v
        s[5] += v * v

    def trend(self) -> tuple[float, float, int] | None:
        """Return (slope per second, correlation, samples) of its values, if defined."""
        n, sx, sv, sxx, sxv, svv = self.sums
        vx, vv = n * sxx - sx * sx, n * svv - sv * sv
        if n < 3 or vx <= 0:
            return None
        slope = (n * sxv - sx * sv) / vx
        r = (n * sxv - sx * sv) / math.sqrt(vx * vv) if vv > 0 else 0.0
        return slope, r, int(n)


def resolution(points: list[tuple[float, float]], hint: float | None = None) -> float:
    """Return the sample spacing: ``hint`` if given, else the median gap."""
    if hint:
        return hint
    gaps = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False) if b[0] > a[0]]
    return median(gaps) if gaps else 1.0


class EpisodeFinder:
    """Sustained episodes and short dips of samples fed oldest first; see find_episodes.

    ``on_episode`` gets each episode as it closes (and the open one at :meth:`finish`).
    Memory: the good samples of the baseline window and the last sustain window.
    """

    def __init__(
        self,
        *,
        is_bad: Callable[[float, float], bool],
        baseline_s: float,
        sustain_s: float,
        fraction: float,
        res: float,
        on_episode: Callable[[Episode], None],
        fixed_baseline: float | None = None,
        min_baseline_samples: int = 4,
        worse: Callable[[float, float], bool] = lambda a, b: a < b,
        close_fraction: float | None = None,
        max_gap_s: float | None = None,
    ) -> None:
        self.is_bad, self.worse = is_bad, worse
        # Longer than this without a sample breaks a run of samples (see _gap).
        self.max_gap_s = max_gap_s if max_gap_s else MAX_GAP_STEPS * res
        self.baseline_s, self.sustain_s = baseline_s, sustain_s
        self.fixed_baseline, self.min_baseline_samples = fixed_baseline, min_baseline_samples
        self.on_episode = on_episode
        self.res = res
        self.k = max(2, round(sustain_s / res))
        self.need = math.ceil(fraction * self.k)
        # A dip is over after this many good samples in a row: one jittery sample above the
        # threshold in the middle of a real drop must not restart it.
        self.dip_close = max(1, self.k - self.need + 1)
        # Good samples among the last k that end a sustained episode: as many as made it
        # sustained (``fraction``), unless ``close_fraction`` says fewer (a majority, so
        # jitter around the line cannot hold an episode open for ever).
        self.close_need = (self.need if close_fraction is None
                           else max(1, math.ceil(close_fraction * self.k)))
        self.recent: deque[bool] = deque(maxlen=self.k)
        self.cur: Episode | None = None  # the open run of bad samples (dip or episode)
        self.good_run = 0
        self.first_good = 0.0
        self.last_t: float | None = None
        # Good samples not yet in the baseline window, the window itself (by time and
        # sorted by value), for the median of good samples in [t - sustain - baseline,
        # t - sustain) without rescanning them at every sample.
        self._newer: deque[tuple[float, float]] = deque()
        self._window: deque[tuple[float, float]] = deque()
        self._sorted: list[float] = []

    def _baseline(self, t: float) -> float | None:
        lo, hi = t - self.sustain_s - self.baseline_s, t - self.sustain_s
        while self._newer and self._newer[0][0] < hi:
            tt, v = self._newer.popleft()
            self._window.append((tt, v))
            insort(self._sorted, v)
        while self._window and self._window[0][0] < lo:
            _, v = self._window.popleft()
            del self._sorted[bisect_left(self._sorted, v)]
        n = len(self._sorted)
        if n < self.min_baseline_samples:
            return None
        s = self._sorted
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    def _good(self, t: float, v: float) -> None:
        if self.fixed_baseline is None:  # only a moving baseline needs them
            self._newer.append((t, v))

    def feed(self, t: float, v: float) -> None:
        """Take the next sample (a non-finite value is skipped)."""
        if not math.isfinite(v):
            return
        if self.last_t is not None and t - self.last_t > self.max_gap_s:
            self._gap(self.last_t)
        self.last_t = t
        if self.fixed_baseline is not None:
            base: float | None = self.fixed_baseline
        elif self.cur is not None:
            base = self.cur.baseline
            self._baseline(t)  # keep the window sliding while the baseline is frozen
        else:
            base = self._baseline(t)
        if base is None:
            self._good(t, v)
            return
        bad = self.is_bad(v, base)
        self.recent.append(bad)
        if bad:
            self._bad(t, v, base)
        else:
            self._ok(t, v)
        if self.cur is not None:
            self.cur.add(t, v)

    def _gap(self, last: float) -> None:
        """No samples for a while: the series stopped (a job requeued and down, scrapes
        failing). Samples on either side are not one run of bad samples: a dip open
        before the gap ends there, and the sustain window starts over.
        """
        self.recent.clear()
        self.good_run = 0
        if self.cur is not None and self.cur.flagged is None:
            self.cur.end = last + self.res
            self._close()

    def _bad(self, t: float, v: float, base: float) -> None:
        self.good_run = 0
        cur = self.cur
        if cur is None:
            cur = self.cur = Episode(start=t, end=None, flagged=None, baseline=base, worst=v,
                                     last_bad=t)
        cur.last_bad = t
        if self.worse(v, cur.worst):
            cur.worst = v
        if cur.flagged is None and len(self.recent) == self.k and sum(self.recent) >= self.need:
            cur.flagged = t

    def _ok(self, t: float, v: float) -> None:
        self._good(t, v)
        if self.good_run == 0:
            self.first_good = t
        self.good_run += 1
        cur = self.cur
        if cur is None:
            return
        if cur.flagged is None:
            if self.good_run >= self.dip_close:
                cur.end = self.first_good
                self._close()
        elif len(self.recent) == self.k and self.k - sum(self.recent) >= self.close_need:
            cur.end = t
            self._close()

    def _close(self) -> None:
        assert self.cur is not None
        ep, self.cur = self.cur, None
        self.on_episode(ep)

    def resume(self, ep: Episode) -> None:
        """Continue ``ep``, an episode found earlier, with the samples fed from now on.

        Its baseline (``fixed_baseline`` aside) stays the one it was found against, so an
        episode longer than the window that re-finds it keeps its start and its level.
        """
        self.cur = ep

    def split(self, at: float, now: float, value: float,
              signals: dict[str, Any] | None) -> Episode:
        """End the open sustained episode at ``at`` and go on with a new one from there.

        The samples are still bad: the new episode is sustained at once (``flagged`` =
        ``now``), against the same baseline, and remembers where the drop began
        (``since``). Returns the new episode.
        """
        old = self.cur
        assert old is not None and old.flagged is not None
        at = min(max(at, old.start + self.res), now)
        new = Episode(start=at, end=None, flagged=now, baseline=old.baseline, worst=value,
                      last_bad=now, signals=signals,
                      since=old.since if old.since is not None else old.start)
        old.end = at
        self._close()
        self.cur = new
        return new

    def finish(self) -> None:
        """Hand over the episode still open, if any."""
        if self.cur is not None:
            self._close()


def find_episodes(
    points: list[tuple[float, float]],
    *,
    is_bad: Callable[[float, float], bool],
    baseline_s: float,
    sustain_s: float,
    fraction: float,
    step_s: float | None = None,
    fixed_baseline: float | None = None,
    min_baseline_samples: int = 4,
    worse: Callable[[float, float], bool] = lambda a, b: a < b,
    close_fraction: float | None = None,
) -> list[Episode]:
    """Return sustained episodes and short dips, oldest first.

    A sample is bad when ``is_bad(value, baseline)``. An episode becomes sustained
    when at least ``fraction`` of the last ``sustain_s`` worth of samples are bad, and
    ends when that fraction (``close_fraction``, if given) of the recent samples are good
    again. The baseline is the
    median of good samples in the ``baseline_s`` before the recent window (or
    ``fixed_baseline``), frozen while an episode is open.
    """
    pts = [(t, v) for t, v in points if math.isfinite(v)]
    if not pts:
        return []
    out: list[Episode] = []
    finder = EpisodeFinder(
        is_bad=is_bad, baseline_s=baseline_s, sustain_s=sustain_s, fraction=fraction,
        res=resolution(pts, step_s), on_episode=out.append, fixed_baseline=fixed_baseline,
        min_baseline_samples=min_baseline_samples, worse=worse, close_fraction=close_fraction)
    for t, v in pts:
        finder.feed(t, v)
    finder.finish()
    return out
