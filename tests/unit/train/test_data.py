import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.train.data import DataPosition, EpochShuffleSampler, ResumableBatches
from sentinel.train.skipplan import SkipPlan


def test_sampler_is_a_permutation_per_epoch_and_ranks_split_batches():
    s = EpochShuffleSampler(num_samples=10, global_batch_size=5, seed=3)
    first_epoch = s.global_indices(0) + s.global_indices(1)
    assert sorted(first_epoch) == list(range(10))
    assert first_epoch != list(range(10))  # shuffled
    assert sorted(s.global_indices(2) + s.global_indices(3)) == list(range(10))
    assert s.global_indices(2) + s.global_indices(3) != first_epoch  # new order each epoch
    # a fresh sampler (a restarted process) gives the same batch for the same index
    assert EpochShuffleSampler(10, 5, seed=3).global_indices(7) == s.global_indices(7)
    ranks = [EpochShuffleSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0](5) + ranks[1](5) == EpochShuffleSampler(10, 4, seed=3).global_indices(5)


def _fault_free(n, sampler):
    return [(i, sampler.global_indices(i)) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 15)), max_size=5),
    resume_points=st.lists(st.integers(1, 30), max_size=4),
)
def test_resumed_runs_read_the_fault_free_batches_minus_skips(ranges, resume_points):
    """Batch by batch: any mix of skips and restarts reads exactly fault-free minus skipped."""
    sampler = EpochShuffleSampler(num_samples=37, global_batch_size=4, seed=11)
    plan = SkipPlan(None)
    for start, length in ranges:
        try:
            plan.add([(start, start + length)], added_by="t", reason="t")
        except ValueError:
            pass  # overlapping draws are simply not added
    total = 80
    expected = [(i, b) for i, b in _fault_free(total, sampler) if not plan.is_skipped(i)]

    got, skipped = [], []
    position = DataPosition()
    cuts = iter(sorted(resume_points))
    cut = next(cuts, None)
    read_at_cut = 0
    while True:
        # a new process each time: new sampler object, position from the "checkpoint"
        it = ResumableBatches(EpochShuffleSampler(37, 4, seed=11).global_indices, position, plan,
                              samples_per_batch=4, on_skip=skipped.append, end=total)
        stopped = False
        for b in it:
            got.append((b.index, b.data))
            if cut is not None and len(got) >= cut:
                cut = next(cuts, None)
                position = it.position
                read_at_cut = len(got)
                stopped = True
                break
        if not stopped:
            break
    assert got == expected
    assert sorted(set(skipped)) == [i for i in range(total) if plan.is_skipped(i)]
    # samples count only batches trained on, never skipped ones
    assert position.samples_consumed == 4 * read_at_cut


def test_seek_and_ranges_added_mid_run_take_effect():
    plan = SkipPlan(None)
    it = ResumableBatches(lambda i: i * 10, skip_plan=plan, samples_per_batch=2)
    assert [next(it).index for _ in range(5)] == [0, 1, 2, 3, 4]
    saved = DataPosition(2, 4)
    plan.add([(3, 5)], added_by="rollback", reason="spike")  # what a rollback does
    it.seek(saved)
    out = [next(it) for _ in range(3)]
    assert [(b.index, b.data) for b in out] == [(2, 20), (5, 50), (6, 60)]
    assert it.position == DataPosition(7, 10)


def test_position_round_trips_through_a_dict():
    p = DataPosition(random.randint(0, 10**9), 12345)
    assert DataPosition.from_dict(p.to_dict()) == p
