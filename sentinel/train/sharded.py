"""Sharded checkpoints: every rank writes its own shard, rank 0 records them as one.

For models that do not fit one rank (FSDP, tensor parallel), each rank passes its own
part of the state (e.g. a sharded ``state_dict``) to :func:`save_sharded`, a collective:

1. rank 0 picks the file name (``CheckpointStore.free_name``) and broadcasts it;
2. every rank writes ``step_S.rankRRRRR.pt`` atomically (temp, fsync, load check,
   rename), exactly as a whole checkpoint is written;
3. the ranks exchange (file, size, sha256) or their error; if any failed, every rank
   removes its shard and raises CheckpointError naming the rank and why;
4. rank 0 records one manifest entry with every shard (its sha256 is the digest of the
   shards' digests), then every rank learns whether that worked.

A crash before step 4 leaves shard files the manifest does not know; the next writer
removes them. :func:`load_sharded` reads and checks this rank's shard, and
:func:`resume_sharded` (a restart) has rank 0 choose the newest sharded checkpoint whose
every shard verifies, so all ranks resume from the same one. The rollback
handler does the same for a sharded target. A sharded checkpoint restores on as many
ranks as saved it (resharding is torch.distributed.checkpoint's job; see DESIGN.md).
"""

from __future__ import annotations

from typing import Any

from sentinel.train.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointStore,
    Shard,
    dist_rank_world,
)


def _all_gather(dist: Any, obj: Any, world: int, group: Any) -> list[Any]:
    if dist is None:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def save_sharded(store: CheckpointStore, step: int, state: dict[str, Any], *,
                 group: Any = None) -> CheckpointInfo:
    """Write this rank's shard of checkpoint ``step``; rank 0 records all (collective)."""
    dist, rank, world = dist_rank_world(group)
    if (rank == 0) != store.writer:
        raise CheckpointError(f"rank {rank}: the store must be opened with writer="
                              f"{rank == 0} (rank 0 records sharded checkpoints)")
    name = store.free_name(step) if rank == 0 else ""
    if dist is not None:
        box = [name]
        dist.broadcast_object_list(box, src=0, group=group)
        name = box[0]
    shard: Shard | None = None
    error = ""
    try:
        shard = store.save_shard(step, name, rank, state)
    except CheckpointError as e:
        error = str(e)
    results = _all_gather(dist, (shard, error), world, group)
    failed = [(r, err) for r, (_, err) in enumerate(results) if err]
    if failed:
        if shard is not None:
            (store.dir / shard.file).unlink(missing_ok=True)
        r, err = failed[0]
        raise CheckpointError(f"sharded checkpoint step {step} not saved: rank {r}: {err}")
    recorded: tuple[CheckpointInfo | None, str] = (None, "")
    if rank == 0:
        try:
            recorded = (store.record_sharded(step, name, [sh for sh, _ in results]), "")
        except CheckpointError as e:
            recorded = (None, str(e))
    if dist is not None:
        box2 = [recorded]
        dist.broadcast_object_list(box2, src=0, group=group)
        recorded = box2[0]
    info, err = recorded
    if info is None:
        raise CheckpointError(f"sharded checkpoint step {step} not recorded by rank 0: {err}")
    return info


def load_sharded(store: CheckpointStore, step: int, map_location: Any = "cpu", *,
                 group: Any = None) -> dict[str, Any]:
    """Return this rank's verified shard of checkpoint ``step`` (no collective)."""
    _, rank, world = dist_rank_world(group)
    return store.deserialize(store.read_verified_shard(step, rank, world), map_location)


def resume_sharded(store: CheckpointStore, map_location: Any = "cpu", *, group: Any = None
                   ) -> tuple[CheckpointInfo, dict[str, Any]] | None:
    """Load this rank's shard of the newest sharded checkpoint that verifies (collective).

    Rank 0 picks the step (every shard checked) and broadcasts it, so all ranks resume
    from the same one; None on every rank when none verifies.
    """
    dist, rank, _ = dist_rank_world(group)
    info = None
    if rank == 0:
        info = next((c for c in reversed(store.checkpoints())
                     if c.shards and store.verify(c.step)), None)
    if dist is not None:
        box = [info]
        dist.broadcast_object_list(box, src=0, group=group)
        info = box[0]
    if info is None:
        return None
    return info, load_sharded(store, info.step, map_location, group=group)
