"""A checkpoint save -> verify -> resume round trip with CheckpointStore, on the job's storage.

The round trip runs in a scratch store, a subdirectory of the job's checkpoint directory
(``.sentinel-preflight-HOST-PID``): the same filesystem and the same code path as the
job's saves, and never an entry in the job's own manifest (the job's store looks only
at ``step_*.pt`` files and its manifest, and the scratch directory is removed at the
end). The state is what a training job saves (``training_state``: a model, its
optimizer after one step, the data position, RNG) plus ``preflight.roundtrip_bytes`` of
random data, on the GPU when there is one. A second store opened read-only, as a
restarted job opens it, loads it back, and every tensor must come back equal.

Then, with ``preflight.verify_job_checkpoint``, the job's own newest checkpoint (the
one it would resume from) is hashed against its manifest through a read-only store.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from sentinel.preflight.checks.base import NO_CHECKPOINT_DIR, Context, human_bytes
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "checkpoint save -> verify -> resume"
SCRATCH_PREFIX = ".sentinel-preflight-"
# The checkpoint step of the scratch store (any step; one checkpoint).
STEP = 100


def _rate(n: int, seconds: float) -> str:
    return f"{human_bytes(n / seconds)}/s" if seconds > 0 else "-"


def _state(torch: Any, nbytes: int, device: str) -> tuple[dict[str, Any], Any, Any]:
    """Return a training state (model, optimizer after one step, data, RNG, payload)."""
    from sentinel.train.checkpoint import training_state
    from sentinel.train.data import DataPosition

    gen = torch.Generator().manual_seed(1234)
    model = torch.nn.Linear(64, 64).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 64, generator=gen).to(device)
    model(x).square().mean().backward()
    opt.step()  # the optimizer now has state (exp_avg, exp_avg_sq, step) to save
    payload = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).to(device)
    state = training_state(model, opt, None, DataPosition(STEP * 8, STEP * 64),
                           extra={"payload": payload})
    return state, model, opt


def _equal(torch: Any, a: Any, b: Any, where: str = "state") -> str | None:
    """Return where ``a`` and ``b`` differ (tensors compared on the CPU), or None."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype or \
                not torch.equal(a.cpu(), b.cpu()):
            return where
        return None
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return where
        for k in a:
            d = _equal(torch, a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list | tuple):
        if not isinstance(b, list | tuple) or len(a) != len(b):
            return where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _equal(torch, x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else where


def round_trip(ctx: Context, directory: Path) -> Result:
    """Save, verify and load back a training state in a scratch store under ``directory``."""
    import torch

    from sentinel.train.checkpoint import CheckpointError, CheckpointStore, restore_training_state

    s = ctx.setup
    nbytes = s.preflight.roundtrip_bytes
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scratch = directory / f"{SCRATCH_PREFIX}{s.hostname}-{os.getpid()}"
    ev: dict[str, Any] = {"directory": str(directory), "scratch": str(scratch),
                          "device": device}
    try:
        state, model, opt = _state(torch, nbytes, device)
        store = CheckpointStore(scratch, keep=1)
        t = time.monotonic()
        info = store.save(STEP, state)
        ev.update(bytes=info.size, save_seconds=round(time.monotonic() - t, 3))
        ev["write_rate"] = _rate(info.size, ev["save_seconds"])
        t = time.monotonic()
        if not store.verify(STEP):
            return problem(f"the checkpoint just saved in {scratch} does not verify against "
                           "its manifest: the storage returns other bytes than were written",
                           **ev)
        ev.update(verify_seconds=round(time.monotonic() - t, 3))
        ev["read_rate"] = _rate(info.size, ev["verify_seconds"])
        # Resume as a restarted job does: another store, read-only, newest verified.
        t = time.monotonic()
        loaded = CheckpointStore(scratch, writer=False).load_latest(map_location=device)
        if loaded is None:
            return problem(f"a read-only store of {scratch} finds no checkpoint to resume "
                           "from", **ev)
        got_info, got = loaded
        model2 = type(model)(64, 64).to(device)
        opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
        position = restore_training_state(got, model2, opt2, None)
        ev.update(load_seconds=round(time.monotonic() - t, 3), resumed_step=got_info.step)
        diff = _equal(torch, state["model"], model2.state_dict(), "model") or _equal(
            torch, state["optimizer"], opt2.state_dict(), "optimizer") or _equal(
            torch, state["extra"], got["extra"], "extra") or (
            None if position.to_dict() == state["data"] else "data")
        if got_info.step != STEP or diff:
            return problem(f"the resumed state differs from the saved one at {diff or 'step'}",
                           **ev)
    except (OSError, RuntimeError, CheckpointError) as e:
        # Disk full (the store says "disk full at ..."), permission denied, a torch error
        # while writing: the job would hit it. Say how much room there was.
        ev["free_bytes"] = shutil.disk_usage(directory).free
        return problem(f"the round trip failed in {scratch} ({human_bytes(ev['free_bytes'])} "
                       f"free there): {type(e).__name__}: {e}", **ev)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ok(f"{human_bytes(ev['bytes'])} saved ({ev['write_rate']}), verified "
              f"({ev['read_rate']}) and resumed equal on {device}", **ev)


def job_store(directory: Path) -> Result | None:
    """Hash the job's newest checkpoint against its manifest; None when it has none."""
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore

    js = CheckpointStore(directory, writer=False)
    try:
        cps = js.checkpoints()
    except CheckpointError as e:
        return problem(f"the job's store cannot be read: {e}", directory=str(directory))
    if not cps:
        return None
    newest = cps[-1]
    t = time.monotonic()
    try:
        js.require_verified(newest.step)
    except CheckpointError as e:
        back = js.latest_verified()
        fallback = f"it would resume from step {back.step}" if back else \
            "no checkpoint of it verifies: it would start from scratch"
        return problem(f"the job's newest checkpoint does not verify ({e}); {fallback}",
                       directory=str(directory), newest_step=newest.step)
    return ok(f"the job's newest checkpoint (step {newest.step}, "
              f"{human_bytes(newest.size)}) verifies", job_newest_step=newest.step,
              job_newest_bytes=newest.size, job_hash_seconds=round(time.monotonic() - t, 3))


def check(ctx: Context) -> Result:
    """Round-trip a checkpoint in the job's directory; verify the job's own newest one."""
    directory = ctx.setup.checkpoint_dir()
    if directory is None:
        return skipped(NO_CHECKPOINT_DIR)
    try:
        import torch  # noqa: F401 - the round trip needs it; say so if it is missing
    except ImportError as e:
        return skipped(f"PyTorch is not installed here ({e}): pip install 'sentinel[torch]', "
                       "or run the check on a training node")
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return problem(f"cannot create the checkpoint directory {directory}: {e.strerror or e} "
                       "(run preflight as the job's user)")
    res = round_trip(ctx, directory)
    if created:
        res.evidence["created_directory"] = True
    if res.status != "ok" or not ctx.setup.preflight.verify_job_checkpoint:
        return res
    own = job_store(directory)
    if own is None:
        res.evidence["job_checkpoints"] = 0
        return res
    own.evidence.update(res.evidence)
    own.summary = f"{res.summary}; {own.summary}"
    return own
