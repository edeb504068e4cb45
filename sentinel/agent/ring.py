"""Fixed-size memory for the step store: a ring of packed step records and a token rate.

Counting records does not bound memory: a record held as a dict costs ~700 bytes, and
one holding a sender's 7 KB host string costs 7 KB. Here a step record is
:data:`RECORD_BYTES` bytes packed with ``struct`` into one ``bytearray`` per job, and
the tokens/sec window of a rank is :data:`RATE_BUCKETS` + 1 counters whatever the
step rate, so the store's size follows from its configured counts alone.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Iterator
from typing import NamedTuple

# seq (arrival number in the job), step, rank, loss, grad_norm, tokens, samples, batch,
# time, flags (which of grad_norm, samples, batch, data_s were reported), data_s.
_RECORD = struct.Struct("<QqIddqqqdBd")
RECORD_BYTES = _RECORD.size
HAS_GRAD_NORM, HAS_SAMPLES, HAS_BATCH, HAS_DATA_S = 1, 2, 4, 8
# Bytes all jobs' rings may take together (agent.step_ring_size x agent.max_jobs x
# RECORD_BYTES); 64 MiB is a quarter of the unit's MemoryMax=256M. The default 20000
# records x 16 jobs is 23.5 MiB.
MAX_RING_BYTES = 64 << 20
# Counters per rank for tokens/sec: the window in 64 slices (+1 for the slice the
# window's start falls in), so the rate is exact to within 1/64 of the window's tokens
# at the edge, and pro rata inside the oldest slice.
RATE_BUCKETS = 64


class Record(NamedTuple):
    """One step record as the ring holds it (``None`` where the report had no value)."""

    seq: int
    step: int
    rank: int
    loss: float
    grad_norm: float | None
    tokens: int
    samples: int | None
    batch: int | None
    time: float
    # Seconds the step waited for its input (the Reporter's extra ``data_s``).
    data_s: float | None = None


class StepRing:
    """The newest ``capacity`` step records of one job, oldest overwritten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()  # grows to capacity * RECORD_BYTES, then is reused
        self._start = 0  # slot of the oldest record once full
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Return the bytes the records take."""
        return len(self._buf)

    def append(self, r: Record) -> None:
        """Add a record, dropping the oldest when full."""
        flags = ((HAS_GRAD_NORM if r.grad_norm is not None else 0)
                 | (HAS_SAMPLES if r.samples is not None else 0)
                 | (HAS_BATCH if r.batch is not None else 0)
                 | (HAS_DATA_S if r.data_s is not None else 0))
        packed = _RECORD.pack(r.seq, r.step, r.rank, r.loss,
                              math.nan if r.grad_norm is None else r.grad_norm, r.tokens,
                              r.samples or 0, r.batch or 0, r.time, flags, r.data_s or 0.0)
        if self._len < self.capacity:
            self._buf += packed
            self._len += 1
            return
        off = self._start * RECORD_BYTES
        self._buf[off:off + RECORD_BYTES] = packed
        self._start = (self._start + 1) % self.capacity

    def snapshot(self) -> bytes:
        """Return the records' bytes, oldest first (a copy: cheap to take under a lock)."""
        off = self._start * RECORD_BYTES
        return bytes(self._buf[off:]) + bytes(self._buf[:off])


# A record as unpacked: Record's fields up to time, the flags, then data_s; absent values
# are still placeholders (see as_record).
Row = tuple[int, int, int, float, float, int, int, int, float, int, float]


def rows(snapshot: bytes) -> Iterator[Row]:
    """Unpack the raw rows of a :meth:`StepRing.snapshot`, oldest first."""
    return _RECORD.iter_unpack(snapshot)


def as_record(row: Row) -> Record:
    """Return the Record of a raw row, with None where the report had no value."""
    seq, step, rank, loss, gn, tokens, samples, batch, t, flags, data_s = row
    return Record(seq, step, rank, loss, gn if flags & HAS_GRAD_NORM else None, tokens,
                  samples if flags & HAS_SAMPLES else None,
                  batch if flags & HAS_BATCH else None, t,
                  data_s if flags & HAS_DATA_S else None)


def records(snapshot: bytes) -> Iterator[Record]:
    """Unpack the records of a :meth:`StepRing.snapshot`, oldest first."""
    return (as_record(r) for r in rows(snapshot))


class TokenRate:
    """Tokens received over the last ``window`` seconds, in fixed memory."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.width = window / RATE_BUCKETS
        # Slot i holds the tokens of time slice ids[i] (slice n covers [n, n+1) * width).
        self._ids = array("q", [-(2**62)]) * (RATE_BUCKETS + 1)
        self._sums = array("d", [0.0]) * (RATE_BUCKETS + 1)

    def add(self, now: float, tokens: int) -> None:
        """Count ``tokens`` received at ``now``."""
        n = int(now // self.width)
        i = n % len(self._ids)
        if self._ids[i] != n:
            self._ids[i], self._sums[i] = n, 0.0
        self._sums[i] += tokens

    def total(self, now: float) -> float:
        """Return the tokens received in (now - window, now]; the oldest slice pro rata."""
        cutoff = now - self.window
        first = int(cutoff // self.width)
        last = int(now // self.width)
        total = 0.0
        for n, tokens in zip(self._ids, self._sums, strict=True):
            if first < n <= last:
                total += tokens
            elif n == first:
                total += tokens * ((first + 1) * self.width - cutoff) / self.width
        return total
