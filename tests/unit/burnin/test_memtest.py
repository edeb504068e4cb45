"""The memory test on CPU memory (the same code runs on the GPU)."""

import itertools

import pytest
import torch

from sentinel.burnin.memtest import PATTERNS, fill_pattern, run_memtest

MB = 1 << 20


def test_patterns_are_deterministic_and_distinct():
    bufs = {}
    for p in PATTERNS:
        x = fill_pattern(torch, torch.empty(4096, dtype=torch.int64), p, 100, 0, 1)
        y = fill_pattern(torch, torch.empty(4096, dtype=torch.int64), p, 100, 0, 1)
        assert torch.equal(x, y)
        bufs[p] = x
    for p, q in itertools.combinations(PATTERNS, 2):
        assert not torch.equal(bufs[p], bufs[q])
    w = bufs["walking_ones"]
    assert int(w[0]) == 1 << (100 % 64) and int(w[1]) == 1 << (101 % 64)
    assert int(bufs["address"][5]) == 105
    # Random words use (almost) every bit: no stuck-at-zero bit goes untested.
    r = bufs["random"]
    ones = [int(((r >> k) & 1).sum()) for k in range(64)]
    assert all(1500 < n < 2600 for n in ones)


def test_unknown_pattern_is_an_error():
    with pytest.raises(ValueError, match="valid: walking_ones, address, random"):
        fill_pattern(torch, torch.empty(4, dtype=torch.int64), "zeros", 0, 0, 1)


def test_clean_memory_passes():
    r = run_memtest(torch, "cpu", 8 * MB, seconds=0.0, chunk_bytes=2 * MB)
    assert r.mismatches == 0 and r.passes == 1
    assert r.bytes_tested == 8 * MB
    assert r.patterns == ["walking_ones"]


def test_planted_faults_are_found_with_their_offset():
    def plant(chunks):
        chunks[1][10] ^= 1 << 17  # a flipped bit in the second chunk
        chunks[3][0] = 0

    r = run_memtest(torch, "cpu", 8 * MB, seconds=0.0, chunk_bytes=2 * MB, after_write=plant)
    assert r.mismatches == 2
    assert r.first_bad_offset == 2 * MB + 10 * 8
    assert len(r.examples) == 2 and "walking_ones" in r.examples[0]


def test_aliased_write_is_found():
    # A write that lands in another chunk: per-chunk write-then-read would miss it.
    def alias(chunks):
        chunks[0][:16] = chunks[2][:16]

    ticks = itertools.count()
    r = run_memtest(torch, "cpu", 6 * MB, seconds=5.0, chunk_bytes=2 * MB, after_write=alias,
                    clock=lambda: float(next(ticks)))
    # Walking ones repeat every 64 words, so only the address pass sees the alias.
    assert r.patterns == ["walking_ones", "address"]
    assert r.mismatches >= 15
    assert "(address)" in r.examples[0]


def test_time_budget_bounds_the_passes():
    ticks = itertools.count()
    r = run_memtest(torch, "cpu", 1 * MB, seconds=5.0, chunk_bytes=MB,
                    clock=lambda: float(next(ticks)))
    # Each pass takes two ticks of this clock; the budget of 5 allows two passes.
    assert r.passes == 2
    assert r.patterns == ["walking_ones", "address"]
