"""Storage headroom for the planned checkpoints: ``(keep + 1) x size`` must fit.

A save writes the new file before retention deletes the oldest, so the store peaks at
``keep + 1`` checkpoints. The checkpoints the store already holds count as room
(retention deletes them in turn), except pinned ones, which stay until their incident
ends; the rest must be free space, as the job's user sees it (``f_bavail``: blocks
reserved for root do not count). The size is ``preflight.checkpoint_bytes``, else
the newest checkpoint in the job's store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sentinel.preflight.checks.base import NO_CHECKPOINT_DIR, Context, human_bytes
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "storage headroom for the planned checkpoints"


def _existing(path: Path) -> Path:
    """Return ``path`` or its nearest existing parent (the filesystem it will be on)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check(ctx: Context) -> Result:
    """Compare free space with what ``keep`` checkpoints of the planned size need."""
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore

    s = ctx.setup
    directory = s.checkpoint_dir()
    if directory is None:
        return skipped(NO_CHECKPOINT_DIR)
    keep = s.preflight.checkpoint_keep
    present, pinned, newest = 0, 0, None
    if (directory / "manifest.json").exists():
        try:
            store = CheckpointStore(directory, writer=False)
            cps = store.checkpoints()
            pins = set(store.pins().values())
        except CheckpointError as e:
            return problem(f"the job's store cannot be read: {e}", directory=str(directory))
        present = sum(c.size for c in cps if (directory / c.file).exists())
        pinned = sum(c.size for c in cps if c.step in pins)
        newest = cps[-1].size if cps else None
    size = s.preflight.checkpoint_bytes or newest
    where = "preflight.checkpoint_bytes" if s.preflight.checkpoint_bytes else \
        "the newest checkpoint in the store"
    if not size:
        return problem(f"the planned checkpoint size is unknown: {directory} holds no "
                       "checkpoint to measure; set preflight.checkpoint_bytes or "
                       "--checkpoint-bytes (e.g. 80G)", directory=str(directory))
    fs = _existing(directory)
    usage = shutil.disk_usage(fs)
    need = size * (keep + 1)
    # Pinned checkpoints stay until their incident ends: they are not room.
    room = usage.free + present - pinned
    ev = {"directory": str(directory), "filesystem_path": str(fs),
          "checkpoint_bytes": size, "size_from": where, "keep": keep,
          "peak_bytes": need, "free_bytes": usage.free, "total_bytes": usage.total,
          "store_bytes": present, "pinned_bytes": pinned}
    text = (f"{keep + 1} x {human_bytes(size)} at the peak of a save (keep {keep} + the one "
            f"being written) = {human_bytes(need)}; free {human_bytes(usage.free)}"
            + (f" + {human_bytes(present)} the store holds" if present else ""))
    if room < need:
        return problem(f"not enough room: {text}; short by {human_bytes(need - room)} (free "
                       "space on the filesystem, or lower keep)", **ev)
    return ok(f"{text} ({room / need:.1f}x)", **ev)
