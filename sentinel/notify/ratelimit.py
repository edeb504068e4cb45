"""A token bucket per channel, so a flapping condition cannot flood a Slack channel.

A message that finds the bucket empty is not dropped: it stays in the outbox and goes
out when a token is back (``wait_s`` says when).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate_per_s``; one token per message."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def try_take(self, now: float) -> bool:
        """Take a token if one is there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until the next token."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate_per_s)


class ChannelLimiter:
    """One token bucket per channel, created full on first use."""

    # Channels remembered; beyond this the least recently used bucket is forgotten
    # (a forgotten channel starts full again), which keeps memory bounded.
    MAX_CHANNELS = 1000

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError(
                f"rate limit: per_minute must be > 0 and burst >= 1, got {per_minute}, {burst}"
            )
        self.rate_per_s = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, channel: str) -> TokenBucket:
        b = self._buckets.pop(channel, None)
        if b is None:
            b = TokenBucket(self.burst, self.rate_per_s, float(self.burst), self.clock())
            if len(self._buckets) >= self.MAX_CHANNELS:
                self._buckets.pop(next(iter(self._buckets)))
        self._buckets[channel] = b  # re-insert: most recently used last
        return b

    def try_take(self, channel: str) -> bool:
        """Take a token for ``channel`` if one is there."""
        return self._bucket(channel).try_take(self.clock())

    def wait_s(self, channel: str) -> float:
        """Seconds until ``channel`` has a token."""
        return self._bucket(channel).wait_s(self.clock())
