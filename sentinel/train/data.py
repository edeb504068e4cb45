"""A resumable data position: the fault-free batch sequence minus a SkipPlan's ranges.

Every batch has a global index: its position in the sequence a fault-free run would
consume. A run's position is the next global index to read and the number of samples
actually trained on. Because the batch for an index is a pure function of the index
(and the seed), a run resumed from any position with any skip plan reads exactly the
batches a fault-free run reads, minus the skipped ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from sentinel.train.skipplan import SkipPlan

T = TypeVar("T")


@dataclass
class DataPosition:
    """Where the data stream is: next global batch index, samples trained on so far."""

    batch_index: int = 0
    samples_consumed: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return a checkpoint-ready dict."""
        return {"batch_index": self.batch_index, "samples_consumed": self.samples_consumed}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> DataPosition:
        """Rebuild a position saved with :meth:`to_dict`."""
        return cls(int(d["batch_index"]), int(d["samples_consumed"]))


class EpochShuffleSampler:
    """Map a global batch index to sample indices: a seeded shuffle per epoch.

    Global batch ``i`` holds positions ``i*B .. (i+1)*B-1`` of the endless stream made
    by concatenating one permutation of ``range(num_samples)`` per epoch (drop-last
    within nothing: a batch may straddle two epochs). With ``world_size`` > 1, rank
    ``r`` takes the ``r``-th contiguous slice of the global batch.
    """

    def __init__(
        self, num_samples: int, global_batch_size: int, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if global_batch_size <= 0 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be positive and divisible by "
                f"world_size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in 0..{world_size - 1}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            perm = list(range(self.num_samples))
            # Reproducible shuffling, not security: the seed must give the same order.
            random.Random(f"{self.seed}:{epoch}").shuffle(perm)  # noqa: S311
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def global_indices(self, batch_index: int) -> list[int]:
        """Return the sample indices of global batch ``batch_index`` (all ranks)."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        out = []
        pos = batch_index * self.global_batch_size
        for p in range(pos, pos + self.global_batch_size):
            epoch, k = divmod(p, self.num_samples)
            out.append(self._permutation(epoch)[k])
        return out

    def __call__(self, batch_index: int) -> list[int]:
        """Return this rank's sample indices of global batch ``batch_index``."""
        per = self.global_batch_size // self.world_size
        g = self.global_indices(batch_index)
        return g[self.rank * per : (self.rank + 1) * per]


@dataclass(frozen=True)
class Batch(Generic[T]):
    """One batch and its global index."""

    index: int
    data: T


class ResumableBatches(Generic[T]):
    """Iterate ``make_batch(i)`` for global indices from a position, skipping a plan's ranges.

    The plan is consulted at every batch, so ranges added during the run (a rollback)
    take effect at once; :meth:`seek` moves the position (a rollback restores it).
    ``on_skip(index)`` is called for every skipped index, so the caller can log them.
    """

    def __init__(
        self,
        make_batch: Callable[[int], T],
        start: DataPosition | None = None,
        skip_plan: SkipPlan | None = None,
        samples_per_batch: int = 1,
        on_skip: Callable[[int], None] | None = None,
        end: int | None = None,
    ) -> None:
        self.make_batch = make_batch
        self.position = DataPosition(**(start or DataPosition()).to_dict())
        self.skip_plan = skip_plan if skip_plan is not None else SkipPlan(None)
        self.samples_per_batch = samples_per_batch
        self.on_skip = on_skip
        self.end = end

    def seek(self, position: DataPosition) -> None:
        """Continue from ``position`` (e.g. the one saved in a checkpoint)."""
        self.position = DataPosition(**position.to_dict())

    def __iter__(self) -> Iterator[Batch[T]]:
        return self

    def __next__(self) -> Batch[T]:
        i = self.position.batch_index
        nxt = self.skip_plan.next_unskipped(i)
        if self.on_skip is not None:
            for s in range(i, nxt):
                self.on_skip(s)
        i = nxt
        if self.end is not None and i >= self.end:
            self.position.batch_index = i
            raise StopIteration
        data = self.make_batch(i)
        self.position = DataPosition(i + 1, self.position.samples_consumed + self.samples_per_batch)
        return Batch(i, data)
