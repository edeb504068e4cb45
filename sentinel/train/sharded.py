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

Every rank goes through every collective whatever happens to its shard, so no rank is
left waiting. A crash before step 4 leaves shard files the manifest does not know; the
next writer removes them. :func:`load_sharded` reads and checks this rank's shard, and
:func:`resume_sharded` (a restart) has rank 0 choose the newest sharded checkpoint whose
every shard verifies, so all ranks resume from the same one. The rollback
handler does the same for a sharded target. A sharded checkpoint restores on as many
ranks as saved it (resharding is torch.distributed.checkpoint's job; see DESIGN.md).

``AsyncCheckpointer(sharded=True)`` runs :func:`save_sharded` in every rank's writer
thread, over a gloo group of their own (:func:`writer_group`). For FSDP2 and tensor
parallel states, :func:`local_shards` turns DTensors into this rank's local tensors for
saving and :func:`from_local_shards` turns them back for ``load_state_dict``.
"""

from __future__ import annotations

import threading
from typing import Any

from sentinel.train.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointStore,
    SaveCancelled,
    Shard,
    dist_rank_world,
)


def _all_gather(dist: Any, obj: Any, world: int, group: Any) -> list[Any]:
    if dist is None:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def writer_group() -> Any:
    """Return a new gloo group over every rank for background collectives (collective).

    Every rank must call it at the same point (``dist.new_group``); None when
    ``torch.distributed`` is not initialised. A writer thread that owns the group
    never interleaves its collectives with the training loop's (NCCL or gloo).
    """
    dist, _, _ = dist_rank_world()
    return None if dist is None else dist.new_group(backend="gloo")


def save_sharded(store: CheckpointStore, step: int, state: dict[str, Any], *,
                 group: Any = None, abort: threading.Event | None = None) -> CheckpointInfo:
    """Write this rank's shard of checkpoint ``step``; rank 0 records all (collective).

    Every rank goes through the same collectives whatever happens to its own shard, so
    none is left waiting: a shard that fails on any rank fails the checkpoint on all
    (CheckpointError naming the rank), and once ``abort`` is set on any rank (a
    rollback past ``step``) every rank raises SaveCancelled. Either way no rank keeps
    its shard and the manifest is unchanged.
    """
    dist, rank, world = dist_rank_world(group)
    if (rank == 0) != store.writer:
        raise CheckpointError(f"rank {rank}: the store must be opened with writer="
                              f"{rank == 0} (rank 0 records sharded checkpoints)")
    name, problem = "", ""
    if rank == 0:
        try:
            name = store.free_name(step)
        except CheckpointError as e:
            problem = str(e)
    if dist is not None:
        box = [(name, problem)]
        dist.broadcast_object_list(box, src=0, group=group)
        name, problem = box[0]
    if problem:
        raise CheckpointError(f"sharded checkpoint step {step} not saved: rank 0: {problem}")
    shard: Shard | None = None
    error = ""
    try:
        shard = store.save_shard(step, name, rank, state, abort=abort)
    except SaveCancelled:
        pass
    except Exception as e:  # noqa: BLE001 - the other ranks must learn of any failure
        error = _why(e)
    cancelled = abort is not None and abort.is_set()
    results = _all_gather(dist, (shard, error, cancelled), world, group)
    failed = [(r, err) for r, (_, err, _) in enumerate(results) if err]
    if failed or any(c for _, _, c in results):
        if shard is not None:
            (store.dir / shard.file).unlink(missing_ok=True)
        if not failed:
            raise SaveCancelled(f"sharded checkpoint step {step}: save cancelled")
        r, err = failed[0]
        raise CheckpointError(f"sharded checkpoint step {step} not saved: rank {r}: {err}")
    info, err, cancelled = _record(store, step, name, [sh for sh, _, _ in results], dist,
                                   rank, group, abort)
    if info is None and shard is not None:
        (store.dir / shard.file).unlink(missing_ok=True)  # a rank with a disk of its own
    if cancelled:
        raise SaveCancelled(f"sharded checkpoint step {step}: save cancelled before recording")
    if info is None:
        raise CheckpointError(f"sharded checkpoint step {step} not recorded by rank 0: {err}")
    return info


def _why(e: Exception) -> str:
    """Return what a rank tells the others of its failure (the type unless it is ours)."""
    return str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"


def _record(store: CheckpointStore, step: int, name: str, shards: list[Shard], dist: Any,
            rank: int, group: Any, abort: threading.Event | None
            ) -> tuple[CheckpointInfo | None, str, bool]:
    """Have rank 0 record the written shards; return (entry, error, cancelled) on all ranks."""
    recorded: tuple[CheckpointInfo | None, str, bool] = (None, "", False)
    if rank == 0:
        try:
            recorded = (store.record_sharded(step, name, shards, abort=abort), "", False)
        except SaveCancelled:
            recorded = (None, "", True)
        except Exception as e:  # noqa: BLE001 - the other ranks wait in the broadcast below
            recorded = (None, _why(e), False)
    if dist is not None:
        box = [recorded]
        dist.broadcast_object_list(box, src=0, group=group)
        recorded = box[0]
    return recorded


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


# -- DTensor states (FSDP2, tensor parallel) -------------------------------------------
def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5: no public DTensor, so no state holds one
        return None
    return DTensor


def local_shards(tree: Any) -> Any:
    """Return ``tree`` with every DTensor replaced by this rank's local tensor of it.

    FSDP2 (``fully_shard``) and tensor-parallel state dicts hold DTensors, which
    ``torch.load(weights_only=True)`` does not read back; a rank's shard of a sharded
    checkpoint holds its local parts as plain tensors. Nothing is copied: the local
    tensors are the live ones (``AsyncCheckpointer.save`` snapshots them).
    """
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tree, dtensor):
        return tree.to_local()
    if isinstance(tree, dict):
        return {k: local_shards(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [local_shards(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(local_shards(v) for v in tree)
    return tree


def _holds(tree: Any, kind: Any) -> bool:
    if isinstance(tree, kind):
        return True
    if isinstance(tree, dict):
        tree = list(tree.values())
    return isinstance(tree, list | tuple) and any(_holds(v, kind) for v in tree)


def from_local_shards(saved: Any, like: Any) -> Any:
    """Return ``saved`` (from :func:`local_shards`) with DTensors where ``like`` has them.

    ``like`` is this rank's live state of the same layout (``{"model":
    model.state_dict(), "optimizer": optimizer.state_dict()}``, the model included so
    that an optimizer without state is known to be sharded): each saved local tensor
    becomes a DTensor on that DTensor's mesh, placements and global shape, ready for
    ``load_state_dict``. Raises CheckpointError naming the first value whose local
    shape differs (saved under another sharding) or, when ``like`` holds DTensors, a
    saved tensor it has no entry for (an optimizer that has not stepped has no state to
    take the sharding from: create it first, see DESIGN.md).
    """
    import torch

    dtensor = _dtensor_type()
    if dtensor is None or not _holds(like, dtensor):
        return saved
    return _from_local(saved, like, "state", dtensor, torch.Tensor)


def _from_local(saved: Any, like: Any, where: str, dtensor: Any, tensor: Any) -> Any:
    if isinstance(like, dtensor):
        mine = tuple(like.to_local().shape)
        if not isinstance(saved, tensor) or tuple(saved.shape) != mine:
            got = tuple(saved.shape) if isinstance(saved, tensor) else type(saved).__name__
            raise CheckpointError(
                f"{where}: the saved local shard is {got}, this rank's is {mine}: saved under "
                "another sharding (a sharded checkpoint restores on as many ranks, sharded "
                "the same way, as saved it)")
        return dtensor.from_local(saved.to(like.device), like.device_mesh, like.placements,
                                  run_check=False, shape=like.shape, stride=like.stride())
    if isinstance(saved, dict) and isinstance(like, dict):
        for k, v in saved.items():
            if k not in like and _holds(v, tensor):
                raise CheckpointError(f"{where}[{k!r}] is saved but the live state has no such "
                                      "entry to take its sharding from (an optimizer that has "
                                      "not stepped yet has no state: step it once, then restore)")
        return {k: _from_local(v, like.get(k), f"{where}[{k!r}]", dtensor, tensor)
                for k, v in saved.items()}
    if isinstance(saved, list | tuple) and isinstance(like, list | tuple) \
            and len(saved) == len(like):
        out = [_from_local(v, w, f"{where}[{i}]", dtensor, tensor)
               for i, (v, w) in enumerate(zip(saved, like, strict=True))]
        return out if isinstance(saved, list) else tuple(out)
    return saved
