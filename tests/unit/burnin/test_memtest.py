"""The memory test on CPU memory (the same code runs on the GPU)."""

import itertools

import pytest
import torch

from sentinel.burnin.memtest import PATTERNS, fill_pattern, plan_memtest, run_memtest

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


GIB = 1 << 30


@pytest.mark.parametrize("free", [0, 1 * MB, 9 * MB, 64 * MB, 600 * MB, 2 * GIB + 123,
                                  4 * GIB, 20 * GIB, 80 * GIB, 141 * GIB])
def test_plan_never_asks_for_more_than_the_free_memory_allows(free):
    plan = plan_memtest(free, 0.85)
    assert plan.total_bytes <= 0.85 * free
    assert plan.test_bytes % 8 == 0 and plan.chunk_bytes % (2 * MB) == 0
    if plan.test_bytes:
        # The buffers stay a small share of what is tested, nearly full GPU or not.
        assert plan.total_bytes - plan.test_bytes <= 0.2 * plan.test_bytes


def test_plan_on_a_big_idle_gpu_and_on_a_nearly_full_one():
    big = plan_memtest(141 * GIB, 0.85)  # an idle H200
    assert big.chunk_bytes == GIB and big.test_bytes > 115 * GIB
    small = plan_memtest(3 * GIB, 0.85)  # another process holds all but 3 GiB
    assert small.chunk_bytes < 256 * MB and 2 * GIB < small.test_bytes < 2.6 * GIB
    none = plan_memtest(5 * MB, 0.85)
    assert none.test_bytes == 0 and none.total_bytes == 0


class LimitedTorch:
    """torch whose explicit allocations fail once ``limit`` bytes are held (a full GPU)."""

    def __init__(self, limit):
        self.limit, self.held, self.peak = limit, 0, 0

    def _take(self, t):
        self.held += t.numel() * t.element_size()
        if self.held > self.limit:
            raise RuntimeError("CUDA out of memory (simulated)")
        self.peak = max(self.peak, self.held)
        return t

    def empty(self, *a, **kw):
        return self._take(torch.empty(*a, **kw))

    def zeros(self, *a, **kw):
        return self._take(torch.zeros(*a, **kw))

    def __getattr__(self, name):
        return getattr(torch, name)


def test_a_planned_test_fits_its_plan_and_finds_a_fault():
    free = 40 * MB
    plan = plan_memtest(free, 0.85)
    lt = LimitedTorch(limit=plan.total_bytes)

    def plant(chunks):
        chunks[-1][-1] ^= 1 << 40

    r = run_memtest(lt, "cpu", plan.test_bytes, 0.0, chunk_bytes=plan.chunk_bytes,
                    min_passes=3, after_write=plant)
    assert r.note == "" and r.bytes_tested == plan.test_bytes
    assert lt.peak <= plan.total_bytes <= 0.85 * free
    assert r.passes == 3 and r.patterns == list(PATTERNS)  # every pattern, budget or not
    assert r.mismatches == 3 and r.first_bad_offset == plan.test_bytes - 8


def test_memory_taken_meanwhile_shortens_the_test_instead_of_failing_it():
    plan = plan_memtest(40 * MB, 0.85)
    lt = LimitedTorch(limit=plan.total_bytes - 3 * plan.chunk_bytes)  # someone took 3 chunks
    r = run_memtest(lt, "cpu", plan.test_bytes, 0.0, chunk_bytes=plan.chunk_bytes)
    assert r.passes == 1 and r.mismatches == 0
    assert 0 < r.bytes_tested < plan.test_bytes
    assert "out of memory" in r.note
    assert run_memtest(LimitedTorch(limit=MB), "cpu", 8 * MB, 0.0).note.startswith(
        "could not allocate its buffers")


def test_scratch_gives_the_same_random_words_without_temporaries():
    a = fill_pattern(torch, torch.empty(5000, dtype=torch.int64), "random", 7, 2, 99)
    scratch = torch.empty(8000, dtype=torch.int64)
    b = fill_pattern(torch, torch.empty(5000, dtype=torch.int64), "random", 7, 2, 99, scratch)
    assert torch.equal(a, b)


def test_stop_request_ends_the_test_between_passes():
    calls = itertools.count()
    r = run_memtest(torch, "cpu", 2 * MB, 60.0, chunk_bytes=MB, min_passes=3,
                    should_stop=lambda: next(calls) >= 1)
    assert r.passes == 1


def test_the_overlapped_test_leaves_the_matmuls_their_headroom():
    """An H200 with 4 GiB free: beside the matmuls the test takes less than all of it."""
    from sentinel.burnin.runner import matmul_headroom_bytes

    n = 8192
    head = matmul_headroom_bytes(n)
    assert head == 1 << 30
    free = 4 * GIB
    alone = plan_memtest(free, 0.85)
    beside = plan_memtest(free - head, 0.85)
    assert beside.test_bytes > 0 and beside.test_bytes < alone.test_bytes
    # Everything the test allocates plus the headroom fits in what was free.
    assert beside.test_bytes + head < free
