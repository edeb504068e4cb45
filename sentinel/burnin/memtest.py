"""A short GPU memory test: write patterns over most of the free memory, read them back.

Each pass writes one pattern into every chunk first and only then reads every chunk
back, so a fault that aliases two addresses (a write landing in the wrong place) shows
up, which writing and reading one chunk at a time would hide. Patterns, in 8-byte words:

- ``walking_ones``: word i holds ``1 << ((i + pass) % 64)``: every bit line toggles.
- ``address``: word i holds its own index (``~i`` on odd passes): catches aliasing.
- ``random``: a splitmix64 hash of (index, seed, pass): data-dependent faults.

Expected values are regenerated from the index, so no second copy is stored. The test
runs whole passes until its time budget would be exceeded (at least one pass).
Works on any torch device, so the CPU tests run the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sentinel.burnin.records import MemtestResult

PATTERNS: tuple[str, ...] = ("walking_ones", "address", "random")
WORD_BYTES = 8
# 1 GiB chunks: large enough that per-op launch cost is nothing, small enough that the
# expected-value buffer (one chunk) costs little of the memory under test.
DEFAULT_CHUNK_BYTES = 1 << 30
MAX_EXAMPLES = 5

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic on every device).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: Any, k: int) -> Any:
    """Shift right logically (torch's >> on int64 is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def fill_pattern(torch: Any, out: Any, pattern: str, base_word: int, pass_no: int,
                 seed: int) -> Any:
    """Write ``pattern`` for words ``base_word..`` into the int64 tensor ``out``."""
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
        out.add_((seed * 1_000_003 + pass_no) * 0x1000193)
        out.mul_(_GOLDEN)
        out.bitwise_xor_(_shr(out, 30)).mul_(_MIX1)
        out.bitwise_xor_(_shr(out, 27)).mul_(_MIX2)
        out.bitwise_xor_(_shr(out, 31))
    else:
        raise ValueError(f"unknown memory-test pattern {pattern!r} (valid: {', '.join(PATTERNS)})")
    return out


def run_memtest(
    torch: Any,
    device: Any,
    total_bytes: int,
    seconds: float,
    seed: int = 1234,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    after_write: Callable[[list[Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MemtestResult:
    """Test about ``total_bytes`` of ``device`` memory for at most ~``seconds``.

    ``after_write`` is called with the chunks after each pattern is written and before
    it is read back; tests use it to plant faults.
    """
    t0 = clock()
    chunk_words = max(1, chunk_bytes // WORD_BYTES)
    want_words = max(0, total_bytes // WORD_BYTES)
    note = ""
    try:
        expected = torch.empty(min(chunk_words, max(want_words, 1)), dtype=torch.int64,
                               device=device)
    except RuntimeError as e:  # out of memory is a RuntimeError subclass on every device
        return MemtestResult(0, 0, 0, clock() - t0, list(PATTERNS),
                             note=f"could not allocate a buffer: {e}")
    chunks: list[Any] = []
    got = 0
    while got < want_words:
        n = min(chunk_words, want_words - got)
        try:
            chunks.append(torch.empty(n, dtype=torch.int64, device=device))
        except RuntimeError:
            note = f"allocated {got * WORD_BYTES} of {total_bytes} bytes asked (out of memory)"
            break
        got += n
    mism = torch.empty(expected.numel(), dtype=torch.bool, device=device)
    passes = 0
    mismatches = 0
    first_bad: int | None = None
    examples: list[str] = []
    used: list[str] = []
    last_pass_s = 0.0
    while chunks:
        elapsed = clock() - t0
        if passes > 0 and elapsed + last_pass_s > seconds:
            break
        p0 = clock()
        pattern = PATTERNS[passes % len(PATTERNS)]
        base = 0
        for ch in chunks:
            fill_pattern(torch, ch, pattern, base, passes, seed)
            base += ch.numel()
        if after_write is not None:
            after_write(chunks)
        counts = torch.zeros(len(chunks), dtype=torch.int64, device=device)
        base = 0
        for i, ch in enumerate(chunks):
            exp = fill_pattern(torch, expected[: ch.numel()], pattern, base, passes, seed)
            torch.ne(ch, exp, out=mism[: ch.numel()])
            counts[i] = mism[: ch.numel()].sum()
            base += ch.numel()
        per_chunk = counts.tolist()  # the pass's only host sync
        if any(per_chunk):
            base = 0
            for ch, k in zip(chunks, per_chunk, strict=True):
                if k:
                    exp = fill_pattern(torch, expected[: ch.numel()], pattern, base, passes,
                                       seed)
                    bad = torch.nonzero(ch != exp).flatten()[:MAX_EXAMPLES].tolist()
                    for j in bad:
                        off = (base + j) * WORD_BYTES
                        if first_bad is None or off < first_bad:
                            first_bad = off
                        if len(examples) < MAX_EXAMPLES:
                            examples.append(f"{off:#x} ({pattern}): wrote "
                                            f"{int(exp[j]) & (2**64 - 1):#018x} read "
                                            f"{int(ch[j]) & (2**64 - 1):#018x}")
                base += ch.numel()
            mismatches += sum(per_chunk)
        if pattern not in used:
            used.append(pattern)
        passes += 1
        last_pass_s = clock() - p0
    tested = got * WORD_BYTES
    del chunks, expected, mism
    return MemtestResult(
        bytes_tested=tested, passes=passes, mismatches=mismatches, seconds=clock() - t0,
        patterns=used, first_bad_offset=first_bad, examples=examples, note=note,
    )
