"""Small rolling statistics shared by detectors (pure Python, O(log n) per update)."""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable

# median(|x_t - x_{t-1}|) of i.i.d. Gaussian noise is 0.954 sigma (0.6745 * sqrt(2)).
DIFF_MAD_TO_SIGMA = 0.6745 * 2**0.5


class RollingMedian:
    """The median of the last ``size`` values added."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._q)

    def add(self, x: float) -> None:
        """Add a value, dropping the oldest once ``size`` are held."""
        self._q.append(x)
        insort(self._sorted, x)
        if len(self._q) > self.size:
            old = self._q.popleft()
            del self._sorted[bisect_left(self._sorted, old)]

    def median(self) -> float:
        """Return the median (raises IndexError when empty)."""
        s = self._sorted
        k = len(s)
        if k == 0:
            raise IndexError("median of an empty window")
        return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])

    def values(self) -> list[float]:
        """Return the held values, oldest first."""
        return list(self._q)

    def clear(self) -> None:
        """Forget every value."""
        self._q.clear()
        self._sorted.clear()


class RobustLevel:
    """A rolling median level plus a noise scale from the median absolute step change.

    The scale uses differences of consecutive values, so a steady trend (normal loss
    descent, LR warmup) barely inflates it, unlike a MAD around the median.
    """

    def __init__(self, size: int, refresh: int = 8) -> None:
        self.level = RollingMedian(size)
        self.diffs = RollingMedian(size)
        self._prev: float | None = None
        self._refresh = refresh
        self._since = refresh
        self._level_sigma = 0.0

    def __len__(self) -> int:
        return len(self.level)

    def add(self, x: float) -> None:
        """Accept ``x`` as a normal value."""
        if self._prev is not None:
            self.diffs.add(abs(x - self._prev))
        self._prev = x
        self.level.add(x)

    def median(self) -> float:
        """Return the level."""
        return self.level.median()

    def scale(self) -> float:
        """Return the noise scale (sigma estimate); 0.0 with fewer than 2 values.

        The larger of the step-change scale and the MAD around the median: correlated
        noise (unshuffled data moves the loss in bumps lasting many steps) has small
        step changes but a wide level spread, and must not look like spikes.
        """
        if len(self.diffs) == 0:
            return 0.0
        self._since += 1
        if self._since >= self._refresh:
            # Recomputed every few calls: O(size) work, and the spread changes slowly.
            self._since = 0
            m = self.level.median()
            dev = sorted(abs(v - m) for v in self.level.values())
            self._level_sigma = 1.4826 * dev[len(dev) // 2]
        return max(self.diffs.median() / DIFF_MAD_TO_SIGMA, self._level_sigma)

    def reset(self, values: Iterable[float]) -> None:
        """Start again from ``values`` (a new normal level, after a plateau shift)."""
        self.level.clear()
        self._prev = None
        for v in values:
            self.add(v)


def median(values: Iterable[float]) -> float:
    """Return the median of ``values`` (raises StatisticsError when empty)."""
    return float(statistics.median(values))


class MedianSketch:
    """The median of every value added: exact up to ``exact`` values, then within 0.1%.

    Past ``exact`` values the sketch keeps counts per logarithmic bin (ratio
    1 + ``rel``) instead of the values, so its memory no longer grows: a run of millions
    of steps costs a few thousand bins. Zero and negative values are counted apart.
    """

    def __init__(self, exact: int = 65536, rel: float = 1e-3) -> None:
        self.exact = exact
        self._values: list[float] | None = []
        self._log_base = math.log1p(rel)
        self._bins: dict[int, int] = {}
        self._low = 0  # values <= 0
        self.n = 0

    def add(self, x: float) -> None:
        """Add one finite value."""
        self.n += 1
        if self._values is not None:
            self._values.append(x)
            if len(self._values) > self.exact:
                for v in self._values:
                    self._bin(v)
                self._values = None
            return
        self._bin(x)

    def _bin(self, x: float) -> None:
        if x <= 0:
            self._low += 1
        else:
            b = math.floor(math.log(x) / self._log_base)
            self._bins[b] = self._bins.get(b, 0) + 1

    def median(self) -> float:
        """Return the median (raises StatisticsError when empty)."""
        if self._values is not None:
            return median(self._values)
        half = (self.n + 1) // 2  # the middle value's rank, 1-based
        if half <= self._low:
            return 0.0
        seen = self._low
        for b in sorted(self._bins):
            seen += self._bins[b]
            if seen >= half:
                return math.exp((b + 0.5) * self._log_base)  # the bin's middle
        raise AssertionError("counts do not add up")
