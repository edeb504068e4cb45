"""When to start measuring: each GPU's speed and clocks are steady, and every GPU at once.

The fixed 5 s warm-up of v1 (gpu-fryer's) waits as long on a GPU that is steady after
one second as on one that is not. Here a GPU is warm when the speed of its last
~1 s of matmul chunks varies by at most :data:`STEADY_TFLOPS_SPREAD` and its last
:data:`STEADY_CLOCK_READINGS` NVML SM-clock readings by at most
:data:`STEADY_CLOCK_SPREAD` (:func:`is_steady`, pure). ``warmup`` seconds is the
longest wait; a GPU that never settles is measured anyway, and its record says so.

:class:`MeasureGate` then opens the measured window of every GPU at the same moment,
when all are warm (or when the slowest keeps the others waiting ``warmup`` seconds):
all GPUs burn together through the whole window, which is how a node's heat and power
problems show, and their speeds are compared over the same seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Chunks are ~0.25 s (runner.CHUNK_TARGET_S): 1 s of them is four or more measurements.
STEADY_WINDOW_S = 1.0
STEADY_MIN_CHUNKS = 3
# Chunk-to-chunk speed of a warm H200 varies by well under 1% (1 s samples within
# +-0.5%, tests/unit/burnin/fixtures/h200_v1_pass.report.json); a GPU still ramping
# from idle clocks, or slowed by its power cap engaging, moves by 10-25%.
STEADY_TFLOPS_SPREAD = 0.03
# A warm, power-capped H200 holds its SM clock between 1440 and 1515 MHz (5% apart, the
# same capture), while the drop from boost clocks to the power-capped level is ~25%.
STEADY_CLOCK_READINGS = 2
STEADY_CLOCK_SPREAD = 0.08
# cuBLAS settles its algorithm choice and workspace within the first few matmuls; one
# second is far more than that and keeps a GPU from counting as warm on two chunks.
MIN_WARMUP_S = 1.0

STEADY, CAP, FIXED, PEERS = "steady", "cap", "fixed", "peers"


@dataclass(frozen=True)
class Chunk:
    """One completed warm-up chunk: when it finished, its GPU time and its speed."""

    done_at: float
    seconds: float
    tflops: float


def spread(values: Sequence[float]) -> float:
    """Return (max - min) / max of positive ``values`` (0 for fewer than two)."""
    if len(values) < 2 or max(values) <= 0:
        return 0.0
    return (max(values) - min(values)) / max(values)


def is_steady(chunks: Sequence[Chunk], clocks_hz: Sequence[float] | None) -> bool:
    """Return True when the last ~1 s of chunks and the last SM clocks are steady.

    ``chunks`` are the warm-up chunks completed since the memory test ended, oldest
    first. ``clocks_hz`` are the SM clock readings of the same period, oldest first, or
    None when NVML cannot read this GPU (then the speed alone decides).
    """
    window: list[Chunk] = []
    span = 0.0
    for c in reversed(chunks):
        window.append(c)
        span += c.seconds
        if span >= STEADY_WINDOW_S and len(window) >= STEADY_MIN_CHUNKS:
            break
    else:
        return False
    if spread([c.tflops for c in window]) > STEADY_TFLOPS_SPREAD:
        return False
    if clocks_hz is None:
        return True
    recent = list(clocks_hz)[-STEADY_CLOCK_READINGS:]
    return len(recent) >= STEADY_CLOCK_READINGS and spread(recent) <= STEADY_CLOCK_SPREAD


class WarmupTracker:
    """Follow one GPU's warm-up chunks and say when it is warm, and why."""

    def __init__(self, mode: str, start: float, cap_s: float) -> None:
        self.mode = mode
        self.cap_s = cap_s
        self.start = start  # when chunks began to count (after the memory test)
        self.chunks: list[Chunk] = []
        self.ended: str = ""  # STEADY, CAP or FIXED once warm

    def restart(self, now: float) -> None:
        """Forget the chunks so far: the memory test just ended and no longer shares the GPU."""
        self.start = now
        self.chunks.clear()

    def add(self, chunk: Chunk) -> None:
        """Record a completed warm-up chunk (bounded: only the last second is kept)."""
        self.chunks.append(chunk)
        while len(self.chunks) > STEADY_MIN_CHUNKS and (
                sum(c.seconds for c in self.chunks[1:]) >= STEADY_WINDOW_S):
            self.chunks.pop(0)

    def check(self, now: float, clocks_hz: Sequence[float] | None) -> str:
        """Return why the GPU is now warm (STEADY, CAP, FIXED), or "" while it is not."""
        if self.ended:
            return self.ended
        elapsed = now - self.start
        if self.mode == FIXED or self.cap_s <= 0:  # no warm-up asked: nothing to wait for
            self.ended = FIXED if elapsed >= self.cap_s else ""
        elif elapsed >= self.cap_s:
            self.ended = CAP
        elif elapsed >= min(MIN_WARMUP_S, self.cap_s) and is_steady(self.chunks, clocks_hz):
            self.ended = STEADY
        return self.ended


class MeasureGate:
    """Open every GPU's measured window at once: when all are warm, or the slowest is late.

    Workers call :meth:`ready` when warm and :meth:`leave` when they stop (a failed GPU
    must not hold the others back). The gate opens when every worker is ready or gone,
    or ``lag_s`` after the first became ready, whichever is first. Thread-safe.
    """

    def __init__(self, workers: Sequence[int], lag_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._waiting = set(workers)
        self._lag_s = lag_s
        self._clock = clock
        self._lock = threading.Lock()
        self._first_ready: float | None = None
        self._opened_at: float | None = None

    def ready(self, worker: int) -> None:
        """Say ``worker`` is warm."""
        with self._lock:
            self._waiting.discard(worker)
            if self._first_ready is None:
                self._first_ready = self._clock()
            self._maybe_open()

    def leave(self, worker: int) -> None:
        """Say ``worker`` stopped (finished or failed): nobody waits for it."""
        with self._lock:
            self._waiting.discard(worker)
            if self._first_ready is not None:
                self._maybe_open()

    def opened_at(self) -> float | None:
        """Return when the measured window began (None while the GPUs are warming)."""
        with self._lock:
            if self._opened_at is None and self._first_ready is not None:
                self._maybe_open()
            return self._opened_at

    def _maybe_open(self) -> None:
        if self._opened_at is not None or self._first_ready is None:
            return
        now = self._clock()
        if not self._waiting or now >= self._first_ready + self._lag_s:
            self._opened_at = now
