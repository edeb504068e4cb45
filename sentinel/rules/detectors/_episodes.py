"""Find sustained episodes (and short dips) in a time series against a baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def resolution(points: list[tuple[float, float]], hint: float | None = None) -> float:
    """Return the sample spacing: ``hint`` if given, else the median gap."""
    if hint:
        return hint
    gaps = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False) if b[0] > a[0]]
    return median(gaps) if gaps else 1.0


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
) -> list[Episode]:
    """Return sustained episodes and short dips, oldest first.

    A sample is bad when ``is_bad(value, baseline)``. An episode becomes sustained
    when at least ``fraction`` of the last ``sustain_s`` worth of samples are bad, and
    ends when that fraction of the recent samples are good again. The baseline is the
    median of good samples in the ``baseline_s`` before the recent window (or
    ``fixed_baseline``), frozen while an episode is open.
    """
    pts = [(t, v) for t, v in points if math.isfinite(v)]
    if not pts:
        return []
    res = resolution(pts, step_s)
    k = max(2, round(sustain_s / res))
    need = math.ceil(fraction * k)
    good: list[tuple[float, float]] = []  # good samples, for the baseline
    recent: list[bool] = []
    out: list[Episode] = []
    cur: Episode | None = None  # the open run of bad samples (dip or episode)
    # A dip is over after this many good samples in a row: one jittery sample above the
    # threshold in the middle of a real drop must not restart it.
    dip_close = max(1, k - need + 1)
    good_run = 0
    first_good = 0.0
    last_t: float | None = None
    for t, v in pts:
        if last_t is not None and t - last_t > MAX_GAP_STEPS * res:
            # No samples for a while: the series stopped (a job requeued and down, scrapes
            # failing). Samples on either side are not one run of bad samples: a dip open
            # before the gap ends there, and the sustain window starts over.
            recent.clear()
            good_run = 0
            if cur is not None and cur.flagged is None:
                cur.end = last_t + res
                out.append(cur)
                cur = None
        last_t = t
        if fixed_baseline is not None:
            base: float | None = fixed_baseline
        elif cur is not None:
            base = cur.baseline
        else:
            lo, hi = t - sustain_s - baseline_s, t - sustain_s
            ref = [x for tt, x in good if lo <= tt < hi]
            base = median(ref) if len(ref) >= min_baseline_samples else None
        if base is None:
            good.append((t, v))
            continue
        bad = is_bad(v, base)
        recent.append(bad)
        if len(recent) > k:
            recent.pop(0)
        if bad:
            good_run = 0
            if cur is None:
                cur = Episode(start=t, end=None, flagged=None, baseline=base, worst=v, last_bad=t)
            cur.last_bad = t
            if worse(v, cur.worst):
                cur.worst = v
            if cur.flagged is None and len(recent) == k and sum(recent) >= need:
                cur.flagged = t
        else:
            good.append((t, v))
            if good_run == 0:
                first_good = t
            good_run += 1
            if cur is not None:
                if cur.flagged is None:
                    if good_run >= dip_close:
                        cur.end = first_good
                        out.append(cur)
                        cur = None
                elif len(recent) == k and k - sum(recent) >= need:
                    cur.end = t
                    out.append(cur)
                    cur = None
        # Keep only what the baseline window can still use.
        while good and good[0][0] < t - sustain_s - baseline_s - res:
            good.pop(0)
    if cur is not None:
        out.append(cur)
    return out
