"""Asynchronous checkpoints: snapshot to host memory, write in the background, keep in RAM.

:meth:`AsyncCheckpointer.save` copies every tensor of a training state into a set of
host buffers (pinned when CUDA is in use, reused from save to save) and returns; a
writer thread then hands the copy to :meth:`CheckpointStore.save`, which writes it to a
temporary file, fsyncs, checks it loads (unless its types vouch for that), renames,
fsyncs the directory and records it in the manifest, exactly as a synchronous save
does. A crash at any moment therefore leaves what a crashed synchronous save leaves:
the previous checkpoints and manifest, plus a temporary file the next writer removes.

With ``overlap=True`` (CUDA) the device-to-host copy runs on a side stream while the
loop goes on; the loop must call :meth:`fence` before anything changes the weights or
optimizer state (before ``optimizer.step()``), which makes the loop's stream wait for
the copy without blocking the host.

With ``stage="auto"`` (where the GPU has memory to spare) or ``"gpu"`` (insists; the
default ``"host"`` never stages), the snapshot is first copied into a reusable set of
GPU buffers (a device-to-device copy, about a millisecond per GB on an H200), and that
copy is all ``fence()`` waits for; the same side stream then drains the GPU buffers into the host
buffers in the background, and the writer waits for that drain, not the loop. One GPU
set serves every save: the next save's copy into it is queued on the same stream after
the previous drain, so it can never overwrite a set still being drained.

When saves come faster than the disk takes them (the writer still busy, one snapshot
already queued behind it, no RAM for another), ``when_behind="coalesce"`` (the default)
lets the new snapshot take the queued one's place: the queued step is never written
(it is *superseded*, counted and logged), the loop does not wait for the disk, and the
disk writes the newest state as often as it can. ``when_behind="wait"`` blocks the loop
until a write ends instead, so every requested step is written. Coalescing needs RAM for
three snapshots (the rollback target, the one being written, the queued one); with less,
saves wait.

Once its write verified, a snapshot stays in host RAM (within ``ram_budget_bytes``) as a
rollback target: :meth:`get` returns it, so a rollback to it reads no disk. On a rank
that does not write (``store.writer`` false) the snapshot is the same training state
and is held from the moment it is taken; the rollback handler only asks for a step the
manifest records as live.

With ``sharded=True`` (FSDP, tensor parallel: each rank passes its own part of the
state) every rank snapshots its part the same way, and every rank's writer thread runs
:func:`sentinel.train.sharded.save_sharded` on it: each writes its shard, and the name,
the results and rank 0's manifest entry travel over a gloo group the writers own, so
they never interleave with the training's collectives. Every rank must save the same
steps in the same order; saves then wait when behind (``when_behind="wait"``), since
coalescing is decided by each rank's own disk. A shard that fails on any rank fails
that checkpoint on all, and a rollback's :meth:`cancel_after` (on every rank) lets the
cancelled writes pass through their collectives without writing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from sentinel.ratelog import LogLimiter
from sentinel.train import sharded as sharded_mod
from sentinel.train.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointStore,
    SaveCancelled,
    dist_rank_world,
)

log = logging.getLogger(__name__)

# Host RAM for snapshots when none is configured: a quarter of the machine's memory
# leaves the rest to data loaders and the page cache; a rank of an 8-GPU node should
# pass its share explicitly.
DEFAULT_RAM_FRACTION = 0.25
# Finished writes remembered for drain_saved(): far more than a loop saves between two
# looks, and a bound if it never looks.
MAX_DONE = 64
WHEN_BEHIND = ("coalesce", "wait")
STAGES = ("auto", "gpu", "host")
# stage="auto" stages in GPU memory only if, after the staging set is allocated, the
# device keeps this much free: the larger of 2 GiB and 5% of its memory, room for the
# loop's own allocation peaks (activations vary from step to step) so staging never
# makes the loop run out of memory.
STAGE_MARGIN_BYTES = 2 << 30
STAGE_MARGIN_FRACTION = 0.05


def default_ram_budget() -> int:
    """Return DEFAULT_RAM_FRACTION of this machine's physical memory, in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_RAM_FRACTION)


def _key(t: Any) -> tuple[Any, ...]:
    """Return what makes two tensors the same data: storage, offset, shape, strides, dtype."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            t.stride(), t.dtype)


def _tensors(tree: Any, out: dict[tuple[Any, ...], Any]) -> None:
    """Add the tensors of a state (dicts, lists, tuples) to ``out`` in a fixed order.

    The same data met twice (tied weights: ``state_dict()`` gives one parameter under
    two names, as two tensor objects) is copied once, and stays shared in the copy.
    """
    import torch

    if isinstance(tree, torch.Tensor):
        out.setdefault(_key(tree), tree)
    elif isinstance(tree, dict):
        for v in tree.values():
            _tensors(v, out)
    elif isinstance(tree, list | tuple):
        for v in tree:
            _tensors(v, out)


def _rebuild(tree: Any, tensors: dict[tuple[Any, ...], Any]) -> Any:
    """Return ``tree`` with fresh containers and each tensor replaced by its _key's entry."""
    import torch

    if isinstance(tree, torch.Tensor):
        return tensors[_key(tree)]
    if isinstance(tree, dict):
        return {k: _rebuild(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rebuild(v, tensors) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_rebuild(v, tensors) for v in tree)
    return tree  # numbers, strings, None: immutable


@dataclass
class _Buffers:
    """One set of host tensors a state is copied into."""

    signature: tuple[tuple[tuple[int, ...], Any], ...]
    tensors: list[Any]
    nbytes: int


@dataclass
class _Staging:
    """The one set of GPU buffers a snapshot is staged in before its drain to host."""

    signature: tuple[tuple[tuple[int, ...], Any, Any], ...]  # (shape, dtype, device)
    tensors: list[Any]
    nbytes: int


def stage_margin(total: int) -> int:
    """Return the free bytes stage="auto" leaves a device of ``total`` bytes."""
    return max(STAGE_MARGIN_BYTES, int(STAGE_MARGIN_FRACTION * total))


def stage_fits(need: int, free: int, total: int) -> bool:
    """Return whether ``need`` bytes of staging leave the device its margin (stage="auto")."""
    return free - need >= stage_margin(total)


@dataclass
class _Snapshot:
    step: int
    tree: Any
    buffers: _Buffers
    event: Any = None  # CUDA event recorded after the copy, or None (copied already)
    abort: threading.Event = field(default_factory=threading.Event)
    info: CheckpointInfo | None = None  # the manifest entry once written and verified
    taken: float = 0.0


@dataclass
class SaveStats:
    """What the last :meth:`AsyncCheckpointer.save` cost the loop."""

    step: int
    blocked_s: float  # time inside save(): waiting for a buffer plus the copy
    waited_s: float  # part of it spent waiting for an earlier write to free a buffer
    nbytes: int
    allocated: bool  # buffers were allocated (first save, or the state's shapes changed)
    superseded: int | None = None  # a queued step this save replaced (never written)
    staged: bool = False  # copied into GPU staging buffers (fence waits only for that)


class AsyncCheckpointer:
    """Save training states in the background and hold recent ones in host RAM."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        ram_budget_bytes: int | None = None,
        overlap: bool = False,
        when_behind: str | None = None,
        sharded: bool = False,
        group: Any = None,
        stage: str = "host",
        gpu_budget_bytes: int | None = None,
    ) -> None:
        when_behind = when_behind or ("wait" if sharded else "coalesce")
        if when_behind not in WHEN_BEHIND:
            raise ValueError(f"when_behind must be one of {', '.join(WHEN_BEHIND)}, "
                             f"got {when_behind!r}")
        if sharded and when_behind != "wait":
            # Each write is a collective: every rank must write the same steps, and what
            # a rank coalesces depends on its own disk's pace (DESIGN.md).
            raise ValueError("sharded saves need when_behind='wait' (every rank writes "
                             f"every step), got {when_behind!r}")
        if sharded:
            _, rank, _ = dist_rank_world(group)
            if (rank == 0) != store.writer:
                raise ValueError(f"rank {rank}: sharded saves need the store opened with "
                                 f"writer={rank == 0} (rank 0 records the checkpoints)")
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if gpu_budget_bytes is not None and gpu_budget_bytes < 0:
            raise ValueError(f"gpu_budget_bytes must be >= 0, got {gpu_budget_bytes}")
        # GPU staging: the mode, a cap on its bytes (None: stage="auto"'s free-memory rule
        # alone), and the one set of buffers, kept from save to save.
        self.stage = stage
        self.gpu_budget = gpu_budget_bytes
        self._staging: _Staging | None = None
        self.store = store
        self.sharded = sharded
        self.when_behind = when_behind
        self.superseded: list[int] = []  # steps replaced before their write (newest last)
        self.superseded_total = 0
        self._limiter = LogLimiter(log)
        self.budget = default_ram_budget() if ram_budget_bytes is None else ram_budget_bytes
        if self.budget < 0:
            raise ValueError(f"ram_budget_bytes must be >= 0, got {ram_budget_bytes}")
        self.overlap = overlap
        # Writes finished since the loop last asked (drain_saved): the loop's thread
        # reports them. Bounded: a loop that never asks keeps only the newest.
        self._done: deque[tuple[CheckpointInfo, float]] = deque(maxlen=MAX_DONE)
        self.last: SaveStats | None = None
        self._cv = threading.Condition()
        self._queue: deque[_Snapshot] = deque()  # waiting for the writer, oldest first
        self._writing: _Snapshot | None = None
        self._held: OrderedDict[int, _Snapshot] = OrderedDict()  # step -> verified snapshot
        self._free: list[_Buffers] = []
        self._errors: list[CheckpointError] = []
        self._fence_event: Any = None
        self._closed = False
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        # Sharded: every rank writes its shard, and the writers' collectives run on a
        # group of their own (created here, on every rank together).
        self._group = (group if group is not None or not sharded
                       else sharded_mod.writer_group())
        if store.writer or sharded:
            self._thread = threading.Thread(target=self._write_loop, name="checkpoint-writer",
                                            daemon=True)
            self._thread.start()

    # -- memory -------------------------------------------------------------------------
    def _allocated(self) -> int:
        sets = [s.buffers for s in self._queue] + [s.buffers for s in self._held.values()]
        if self._writing is not None:
            sets.append(self._writing.buffers)
        return sum(b.nbytes for b in sets + self._free)

    def _take_buffers(self, signature: tuple[Any, ...], nbytes: int
                      ) -> tuple[_Buffers, bool, int | None]:
        """Return a buffer set for a state of ``signature``, whether allocated, superseded step.

        Called with ``self._cv`` held. A free set of the same shapes is reused; a new set
        is allocated while the budget allows (one set always is, or nothing could be
        saved); otherwise the oldest held snapshot gives up its set; otherwise, with
        ``when_behind="coalesce"``, the newest queued snapshot (not yet being written)
        gives up its place; otherwise this waits for the oldest write to finish.
        """
        while True:
            self._raise_errors()
            for i, b in enumerate(self._free):
                if b.signature == signature:
                    return self._free.pop(i), False, None
            # Sets of other shapes are of no further use (the state's layout changed).
            self._free.clear()
            if self._allocated() + nbytes <= self.budget or self._allocated() == 0:
                return self._allocate(signature, nbytes), True, None
            # Give up the oldest held snapshot, but keep the newest verified one in RAM
            # while a write is under way: it is the rollback target until that write ends.
            busy = len(self._queue) + (self._writing is not None)
            if self._held and (len(self._held) > 1 or not busy):
                _, snap = self._held.popitem(last=False)
                self._free.append(snap.buffers)
                continue
            if not busy:
                return self._allocate(signature, nbytes), True, None
            if (self.when_behind == "coalesce" and self._queue and self.budget >= 3 * nbytes
                    and self._queue[-1].buffers.signature == signature):
                # The disk is behind: the newest queued state replaces it. Its copy ran on
                # the same side stream, so the new copy is ordered after it.
                old = self._queue.pop()
                return old.buffers, False, old.step
            self._cv.wait()

    def _allocate(self, signature: tuple[Any, ...], nbytes: int) -> _Buffers:
        import torch

        pin = torch.cuda.is_available()
        tensors = [torch.empty(shape, dtype=dtype, pin_memory=pin) for shape, dtype in signature]
        return _Buffers(signature, tensors, nbytes)

    # -- saving -------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any]) -> SaveStats:
        """Snapshot ``state`` for ``step`` and queue its write; return what it cost the loop.

        Raises CheckpointError if an earlier background write failed (the message says
        why; the checkpoints before it are intact).
        """
        t0 = time.perf_counter()
        found: dict[tuple[Any, ...], Any] = {}
        _tensors(state, found)
        srcs = list(found.values())
        signature = tuple((tuple(t.shape), t.dtype) for t in srcs)
        nbytes = sum(t.numel() * t.element_size() for t in srcs)
        with self._cv:
            if self._closed:
                raise CheckpointError("AsyncCheckpointer is closed")
            bufs, allocated, superseded = self._take_buffers(signature, nbytes)
        waited = time.perf_counter() - t0
        if superseded is not None:
            self.superseded.append(superseded)
            del self.superseded[:-MAX_DONE]
            self.superseded_total += 1
            self._limiter.log(
                logging.WARNING, "superseded",
                "checkpoint step %d superseded by step %d before its write: saves come "
                "faster than the disk takes them (%d superseded so far); save less often "
                "or give the writer a faster disk", superseded, step, self.superseded_total)
        event = fence = None
        on_gpu = [i for i, t in enumerate(srcs) if t.is_cuda]
        staged = False
        if on_gpu:
            try:
                event, fence, staged = self._copy_from_gpu(srcs, on_gpu, bufs)
            except BaseException:
                with self._cv:
                    self._free.append(bufs)  # nothing was queued into them
                raise
        for i, t in enumerate(srcs):
            if not t.is_cuda:
                bufs.tensors[i].copy_(t)
        if fence is not None:
            if self.overlap:
                self._fence_event = fence
            else:
                fence.synchronize()
        tree = _rebuild(state, {_key(s): b for s, b in zip(srcs, bufs.tensors, strict=True)})
        snap = _Snapshot(step, tree, bufs, event, taken=time.time())
        with self._cv:
            self._drop_step(step)
            if self._thread is not None:
                self._queue.append(snap)
            else:
                self._hold(snap)
            self._cv.notify_all()
        self.last = SaveStats(step, time.perf_counter() - t0, waited, nbytes, allocated,
                              superseded, staged)
        return self.last

    def _copy_from_gpu(self, srcs: list[Any], on_gpu: list[int], bufs: _Buffers
                       ) -> tuple[Any, Any, bool]:
        """Queue the copy of ``srcs[i]`` (CUDA) into ``bufs``; return (drained, fence, staged).

        Everything runs on the side stream, after what the loop queued so far: with a
        staging set, a device-to-device copy (``fence``: the loop may change the state
        once it completes) then the drain into the host buffers (``drained``: they hold
        the snapshot); without, the device-to-host copy is both.
        """
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        self._stream.wait_stream(torch.cuda.current_stream())
        staging = self._staging_for([srcs[i] for i in on_gpu])
        with torch.cuda.stream(self._stream):
            for i in on_gpu:
                # A temporary the caller drops must not be reused by the allocator
                # before this stream has read it.
                srcs[i].record_stream(self._stream)
            if staging is not None:
                for j, i in enumerate(on_gpu):
                    staging.tensors[j].copy_(srcs[i], non_blocking=True)
                fence = torch.cuda.Event()  # type: ignore[no-untyped-call]
                fence.record(self._stream)
                # Queued after this copy on the same stream: the next save's copy into
                # the staging set cannot start before this drain has read it.
                for j, i in enumerate(on_gpu):
                    bufs.tensors[i].copy_(staging.tensors[j], non_blocking=True)
            else:
                for i in on_gpu:
                    bufs.tensors[i].copy_(srcs[i], non_blocking=True)
            drained = torch.cuda.Event()  # type: ignore[no-untyped-call]
            drained.record(self._stream)
        return drained, (fence if staging is not None else drained), staging is not None

    def _staging_for(self, srcs: list[Any]) -> _Staging | None:
        """Return the GPU staging set for ``srcs``, allocating it if allowed; None: host path.

        stage="host" never stages; "auto" stages when the set fits ``gpu_budget_bytes``
        and leaves the device its margin (:func:`stage_fits`), else copies straight to
        host; "gpu" raises CheckpointError when the set cannot be had.
        """
        import torch

        if self.stage == "host":
            return None
        signature = tuple((tuple(t.shape), t.dtype, t.device) for t in srcs)
        if self._staging is not None and self._staging.signature == signature:
            return self._staging
        # The state's layout changed: the old set goes. It was allocated on the side
        # stream, so the allocator hands its memory out again only after what that
        # stream has queued (its last drain) is done.
        self._staging = None
        need = sum(t.numel() * t.element_size() for t in srcs)
        why = None
        if self.gpu_budget is not None and need > self.gpu_budget:
            why = f"{need} bytes of staging > gpu_budget_bytes {self.gpu_budget}"
        elif self.stage == "auto":
            for dev in {t.device for t in srcs}:
                free, total = torch.cuda.mem_get_info(dev)
                dev_need = sum(t.numel() * t.element_size() for t in srcs if t.device == dev)
                if not stage_fits(dev_need, free, total):
                    why = (f"{dev} has {free} bytes free, and {dev_need} of staging would "
                           f"leave less than the margin of {stage_margin(total)}")
        if why is None:
            try:
                with torch.cuda.stream(self._stream):
                    tensors = [torch.empty(t.shape, dtype=t.dtype, device=t.device)
                               for t in srcs]
            except torch.cuda.OutOfMemoryError as e:
                why = f"out of GPU memory ({str(e).splitlines()[0]})"
            else:
                self._staging = _Staging(signature, tensors, need)
                return self._staging
        if self.stage == "gpu":
            raise CheckpointError(f"stage='gpu': cannot stage the snapshot in GPU memory: "
                                  f"{why}; use stage='auto' to fall back to host copies")
        self._limiter.log(logging.INFO, "no-staging", "checkpoint snapshot copied straight "
                          "to host memory (fence() waits for that copy): %s", why)
        return None

    @property
    def fence_pending(self) -> bool:
        """Return whether the loop's stream has a snapshot copy to wait for at fence()."""
        return self._fence_event is not None

    def staging_bytes(self) -> int:
        """Return the GPU memory held by the staging set (0 when none)."""
        return self._staging.nbytes if self._staging is not None else 0

    def fence(self) -> None:
        """Make the loop's CUDA stream wait for the last snapshot's copy (no host wait).

        Call before the optimizer changes the weights when ``overlap=True``.
        """
        if self._fence_event is not None:
            import torch

            torch.cuda.current_stream().wait_event(self._fence_event)
            self._fence_event = None

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                snap = self._writing = self._queue.popleft()
            t0 = time.perf_counter()
            info: CheckpointInfo | None = None
            try:
                if snap.event is not None:
                    snap.event.synchronize()
                if self.sharded:  # a collective: runs even when cancelled, as on every rank
                    info = sharded_mod.save_sharded(self.store, snap.step, snap.tree,
                                                    group=self._group, abort=snap.abort)
                elif not snap.abort.is_set():
                    info = self.store.save(snap.step, snap.tree, abort=snap.abort)
            except SaveCancelled:
                log.info("checkpoint step %d: background save cancelled", snap.step)
            except CheckpointError as e:
                log.error("background checkpoint save failed: %s", e)
                with self._cv:
                    self._errors.append(e)
            except Exception as e:  # noqa: BLE001 - the loop must learn of any failure
                log.exception("background checkpoint save of step %d failed", snap.step)
                with self._cv:
                    self._errors.append(CheckpointError(
                        f"checkpoint step {snap.step}: background save failed "
                        f"({type(e).__name__}: {e})"))
            with self._cv:
                self._writing = None
                if info is not None and not snap.abort.is_set():
                    snap.info = info
                    self._hold(snap)
                else:
                    self._free.append(snap.buffers)
                self._cv.notify_all()
                if info is not None:
                    self._done.append((info, time.perf_counter() - t0))

    def _hold(self, snap: _Snapshot) -> None:
        """Keep ``snap`` as a rollback target; called with ``self._cv`` held."""
        self._drop_step(snap.step)
        self._held[snap.step] = snap
        # Beyond the budget the oldest go, but the newest always stays.
        while len(self._held) > 1 and self._allocated() > self.budget:
            _, old = self._held.popitem(last=False)
            self._free.append(old.buffers)
        if self._allocated() > self.budget:
            self._free.clear()

    def _drop_step(self, step: int) -> None:
        old = self._held.pop(step, None)
        if old is not None:
            self._free.append(old.buffers)

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every queued write is done; raise the first background error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._queue or self._writing is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CheckpointError(f"checkpoint writes still running after {timeout} s")
                self._cv.wait(left)
            self._raise_errors()

    def drain_saved(self) -> list[tuple[CheckpointInfo, float]]:
        """Return (entry, seconds the background write took) of writes done since last asked."""
        with self._cv:
            done = list(self._done)
            self._done.clear()
        return done

    def pending(self) -> list[int]:
        """Return the steps queued or being written, oldest first."""
        with self._cv:
            steps = [self._writing.step] if self._writing is not None else []
            return steps + [s.step for s in self._queue]

    # -- rollback -----------------------------------------------------------------------
    def held_steps(self) -> list[int]:
        """Return the steps held in host RAM as rollback targets, oldest first."""
        with self._cv:
            return sorted(self._held)

    def held_bytes(self) -> int:
        """Return the host memory this checkpointer holds (buffers of every kind)."""
        with self._cv:
            return self._allocated()

    def get(self, step: int, entry: CheckpointInfo | None, map_location: Any = "cpu"
            ) -> dict[str, Any] | None:
        """Return a fresh copy of the held state of ``step`` on ``map_location``, or None.

        On the writing rank the snapshot must be the one the manifest records (same file
        and sha256); a step saved again since, or never verified, gives None.
        """
        import torch

        with self._cv:
            snap = self._held.get(step)
            if snap is None or entry is None or entry.abandoned is not None:
                return None
            # A sharded snapshot is held once written on every rank, with rank 0's entry.
            if (self.store.writer or self.sharded) and (
                    snap.info is None or snap.info.file != entry.file
                    or snap.info.sha256 != entry.sha256):
                return None
            if snap.event is not None:
                snap.event.synchronize()  # a rank that does not write holds it at once
            # Held while copying: a save in another thread cannot take this set meanwhile
            # (saves happen on the loop's thread, which is here).
            copies = {_key(t): t.to(map_location, copy=True, non_blocking=True)
                      for t in snap.buffers.tensors}
            tree = _rebuild(snap.tree, copies)
        if any(t.is_cuda for t in copies.values()):
            torch.cuda.synchronize()
        return tree  # type: ignore[no-any-return]

    def cancel_after(self, step: int) -> list[int]:
        """Call off writes of steps after ``step`` and drop those held; return them.

        Waits until a cancelled write has stopped, so none of them reaches the manifest
        afterwards (a rollback abandons those steps next). Sharded, every rank must call
        it (with the same ``step``): the cancelled writes still run their collectives.
        """
        if self.sharded:
            return self._cancel_sharded_after(step)
        with self._cv:
            gone = [s.step for s in self._queue if s.step > step]
            for s in [s for s in self._queue if s.step > step]:
                self._queue.remove(s)
                self._free.append(s.buffers)
            writing = self._writing
            if writing is not None and writing.step > step:
                writing.abort.set()
                gone.append(writing.step)
                while self._writing is writing:
                    self._cv.wait()
            for held in [k for k in self._held if k > step]:
                self._drop_step(held)
                gone.append(held)
            self._cv.notify_all()
        return sorted(set(gone))

    def _cancel_sharded_after(self, step: int) -> list[int]:
        """Abort queued and running sharded writes after ``step``; wait until they are done.

        They stay queued: each rank's writer must take part in the same sequence of
        collectives, so a cancelled write is passed through (no file kept, every rank
        agrees it was cancelled) rather than dropped on this rank alone.
        """
        with self._cv:
            doomed = [s for s in self._queue if s.step > step]
            if self._writing is not None and self._writing.step > step:
                doomed.append(self._writing)
            for s in doomed:
                s.abort.set()
            while any(s is self._writing or any(s is q for q in self._queue) for s in doomed):
                self._cv.wait()
            gone = [s.step for s in doomed]
            for held in [k for k in self._held if k > step]:
                self._drop_step(held)
                gone.append(held)
            self._cv.notify_all()
        return sorted(set(gone))

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued writes, stop the writer and release the buffers."""
        try:
            self.wait(timeout)
        finally:
            with self._cv:
                self._closed = True
                self._held.clear()
                self._free.clear()
                self._staging = None
                self._cv.notify_all()
            if self._thread is not None:
                self._thread.join(timeout)
