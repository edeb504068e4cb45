"""A short GPU memory test: write patterns over most of the free memory, read them back.

Each pass writes one pattern into every chunk first and only then reads every chunk
back, so a fault that aliases two addresses (a write landing in the wrong place) shows
up, which writing and reading one chunk at a time would hide. Patterns, in 8-byte words:

- ``walking_ones``: word i holds ``1 << ((i + pass) % 64)``: every bit line toggles.
- ``address``: word i holds its own index (``~i`` on odd passes): catches aliasing.
- ``random``: a splitmix64 hash of (index, seed, pass): data-dependent faults.

Expected values are regenerated from the index, so no second copy is stored. The test
runs every pattern once, then more whole passes while its time budget allows.
Works on any torch device, so the CPU tests run the same code.

Sizing (:func:`plan_memtest`): besides the tested chunks the test needs one chunk of
expected values, one chunk of scratch (the random pattern's shifts) and a byte per word
of one chunk for the comparison. The plan keeps all of it within ``fraction`` of the
free memory, shrinking the chunk on a nearly full GPU, so the test never asks for more
than is free; an allocation that still fails (another process took memory meanwhile)
shortens the test, it never fails the GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.burnin.records import MemtestResult

PATTERNS: tuple[str, ...] = ("walking_ones", "address", "random")
WORD_BYTES = 8
# 1 GiB chunks: large enough that per-op launch cost is nothing, small enough that the
# expected-value and scratch buffers (one chunk each) cost little of the memory tested.
DEFAULT_CHUNK_BYTES = 1 << 30
# On a nearly full GPU the chunk shrinks so the two extra chunks stay a small share of
# what is tested (1/CHUNKS_PER_TEST of it), but not below 2 MiB, the caching allocator's
# granule for large blocks (smaller chunks would waste the rest of each granule).
CHUNKS_PER_TEST = 16
MIN_CHUNK_BYTES = 2 << 20
# Less than this left to test after the buffers: nothing worth testing.
MIN_TEST_BYTES = 4 * MIN_CHUNK_BYTES
MAX_EXAMPLES = 5

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic on every device).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


@dataclass(frozen=True)
class MemtestPlan:
    """How much memory the test covers, in chunks of what size, and what it costs in all."""

    free_bytes: int
    test_bytes: int  # 0: too little free to test anything
    chunk_bytes: int

    @property
    def total_bytes(self) -> int:
        """Return everything the test allocates: tested chunks, expected, scratch, compare."""
        if self.test_bytes == 0:
            return 0
        return self.test_bytes + buffer_bytes(self.chunk_bytes)


# Bad words are looked up this many at a time, so the index list torch.nonzero builds
# stays within 2 MiB (int64 indices) even when every word of a chunk is bad.
FIND_BLOCK_WORDS = MIN_CHUNK_BYTES // WORD_BYTES


def buffer_bytes(chunk_bytes: int) -> int:
    """Return the test's own buffers for a chunk size: expected + scratch + compare mask.

    Plus one allocator granule each for the per-chunk counts and the bad-word lookup.
    """
    words = chunk_bytes // WORD_BYTES
    return 2 * chunk_bytes + words + 2 * MIN_CHUNK_BYTES


def plan_memtest(free_bytes: int, fraction: float,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> MemtestPlan:
    """Return the largest test whose every allocation fits in ``fraction`` of ``free_bytes``."""
    usable = int(max(0, free_bytes) * fraction)
    chunk = min(chunk_bytes, usable // CHUNKS_PER_TEST)
    chunk -= chunk % MIN_CHUNK_BYTES
    chunk = max(chunk, MIN_CHUNK_BYTES)
    test = usable - buffer_bytes(chunk)
    test -= test % WORD_BYTES
    if test < max(MIN_TEST_BYTES, chunk):
        return MemtestPlan(free_bytes=free_bytes, test_bytes=0, chunk_bytes=chunk)
    return MemtestPlan(free_bytes=free_bytes, test_bytes=test, chunk_bytes=chunk)


def _xor_shr(torch: Any, x: Any, k: int, scratch: Any | None) -> Any:
    """Set ``x ^= x >>> k`` (logical shift: torch's >> on int64 copies the sign bit).

    With ``scratch`` (a tensor like ``x``) no temporary is allocated, so a test sized to
    the free memory does not run out of it half-way through a pattern.
    """
    mask = (1 << (64 - k)) - 1
    if scratch is None:
        return x.bitwise_xor_((x >> k) & mask)
    torch.bitwise_right_shift(x, k, out=scratch)
    scratch.bitwise_and_(mask)
    return x.bitwise_xor_(scratch)


def fill_pattern(torch: Any, out: Any, pattern: str, base_word: int, pass_no: int,
                 seed: int, scratch: Any | None = None) -> Any:
    """Write ``pattern`` for words ``base_word..`` into the int64 tensor ``out``.

    ``scratch``, an int64 tensor at least as long as ``out``, avoids temporaries.
    """
    n = out.numel()
    torch.arange(base_word, base_word + n, dtype=torch.int64, device=out.device, out=out)
    if pattern == "walking_ones":
        out.add_(pass_no).remainder_(64)
        one = torch.ones((), dtype=torch.int64, device=out.device)
        torch.bitwise_left_shift(one, out, out=out)
    elif pattern == "address":
        if pass_no % 2:
            out.bitwise_not_()
    elif pattern == "random":
        tmp = None if scratch is None else scratch[:n]
        out.add_((seed * 1_000_003 + pass_no) * 0x1000193)
        out.mul_(_GOLDEN)
        _xor_shr(torch, out, 30, tmp).mul_(_MIX1)
        _xor_shr(torch, out, 27, tmp).mul_(_MIX2)
        _xor_shr(torch, out, 31, tmp)
    else:
        raise ValueError(f"unknown memory-test pattern {pattern!r} (valid: {', '.join(PATTERNS)})")
    return out


@dataclass
class _Buffers:
    """The test's allocations: the chunks under test and the buffers reading them back."""

    chunks: list[Any]
    expected: Any
    scratch: Any
    mism: Any
    counts: Any
    note: str = ""


def _allocate(torch: Any, device: Any, total_bytes: int, chunk_bytes: int) -> _Buffers | str:
    """Allocate the buffers, then as many chunks as fit; return why not if none could be."""
    chunk_words = max(1, chunk_bytes // WORD_BYTES)
    want_words = max(0, total_bytes // WORD_BYTES)
    n_buf = min(chunk_words, max(want_words, 1))
    n_chunks = -(-want_words // chunk_words)
    try:
        expected = torch.empty(n_buf, dtype=torch.int64, device=device)
        scratch = torch.empty(n_buf, dtype=torch.int64, device=device)
        mism = torch.empty(n_buf, dtype=torch.bool, device=device)
        counts = torch.zeros(max(1, n_chunks), dtype=torch.int64, device=device)
    except RuntimeError as e:  # out of memory is a RuntimeError subclass on every device
        return f"could not allocate its buffers: {e}"
    chunks: list[Any] = []
    got = 0
    note = ""
    while got < want_words:
        n = min(chunk_words, want_words - got)
        try:
            chunks.append(torch.empty(n, dtype=torch.int64, device=device))
        except RuntimeError:
            note = f"allocated {got * WORD_BYTES} of {total_bytes} bytes asked (out of memory)"
            break
        got += n
    return _Buffers(chunks, expected, scratch, mism, counts, note)


def _check_pass(torch: Any, b: _Buffers, pattern: str, pass_no: int, seed: int,
                examples: list[str]) -> tuple[int, int | None]:
    """Read every chunk back against ``pattern``; return (mismatches, first bad offset)."""
    base = 0
    for i, ch in enumerate(b.chunks):
        n = ch.numel()
        exp = fill_pattern(torch, b.expected[:n], pattern, base, pass_no, seed, b.scratch)
        torch.ne(ch, exp, out=b.mism[:n])
        b.counts[i] = b.mism[:n].sum()
        base += n
    per_chunk = b.counts[: len(b.chunks)].tolist()  # the pass's only host sync
    if not any(per_chunk):
        return 0, None
    first_bad: int | None = None
    base = 0
    for ch, k in zip(b.chunks, per_chunk, strict=True):
        if k:
            n = ch.numel()
            exp = fill_pattern(torch, b.expected[:n], pattern, base, pass_no, seed, b.scratch)
            torch.ne(ch, exp, out=b.mism[:n])
            for j in _first_set(torch, b.mism[:n], MAX_EXAMPLES):
                off = (base + j) * WORD_BYTES
                if first_bad is None or off < first_bad:
                    first_bad = off
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{off:#x} ({pattern}): wrote "
                                    f"{int(exp[j]) & (2**64 - 1):#018x} read "
                                    f"{int(ch[j]) & (2**64 - 1):#018x}")
        base += ch.numel()
    return int(sum(per_chunk)), first_bad


def _first_set(torch: Any, mask: Any, limit: int) -> list[int]:
    """Return the indices of the first ``limit`` set elements of ``mask``, block by block."""
    out: list[int] = []
    for start in range(0, mask.numel(), FIND_BLOCK_WORDS):
        block = mask[start:start + FIND_BLOCK_WORDS]
        out += [start + int(j) for j in torch.nonzero(block).flatten()[:limit - len(out)]]
        if len(out) >= limit:
            break
    return out


def run_memtest(
    torch: Any,
    device: Any,
    total_bytes: int,
    seconds: float,
    seed: int = 1234,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    min_passes: int = 1,
    after_write: Callable[[list[Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MemtestResult:
    """Test about ``total_bytes`` of ``device`` memory for at most ~``seconds``.

    Runs at least ``min_passes`` whole passes (``len(PATTERNS)``: every pattern once),
    then more while the next would end within ``seconds``. ``should_stop`` ends it
    between passes (the burn-in is stopping). ``after_write`` is called with the chunks
    after each pattern is written and before it is read back; tests use it to plant faults.
    """
    t0 = clock()
    bufs = _allocate(torch, device, total_bytes, chunk_bytes)
    if isinstance(bufs, str):
        return MemtestResult(0, 0, 0, clock() - t0, [], note=bufs)
    passes = mismatches = 0
    first_bad: int | None = None
    examples: list[str] = []
    used: list[str] = []
    last_pass_s = 0.0
    while bufs.chunks:
        if should_stop is not None and should_stop():
            break
        if passes >= min_passes and clock() - t0 + last_pass_s > seconds:
            break
        p0 = clock()
        pattern = PATTERNS[passes % len(PATTERNS)]
        base = 0
        for ch in bufs.chunks:
            fill_pattern(torch, ch, pattern, base, passes, seed, bufs.scratch)
            base += ch.numel()
        if after_write is not None:
            after_write(bufs.chunks)
        bad, first = _check_pass(torch, bufs, pattern, passes, seed, examples)
        mismatches += bad
        if first is not None and (first_bad is None or first < first_bad):
            first_bad = first
        if pattern not in used:
            used.append(pattern)
        passes += 1
        last_pass_s = clock() - p0
    tested = sum(ch.numel() for ch in bufs.chunks) * WORD_BYTES
    note = bufs.note
    del bufs
    return MemtestResult(
        bytes_tested=tested, passes=passes, mismatches=mismatches, seconds=clock() - t0,
        patterns=used, first_bad_offset=first_bad, examples=examples, note=note,
    )
