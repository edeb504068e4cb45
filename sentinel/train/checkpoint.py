"""Atomic, checksummed checkpoints with a manifest, retention, pins and offload.

Layout of a store directory::

    manifest.json               {"version": 2, "checkpoints": [...], "pins": {incident: step}}
    manifest.lock               empty; flock'd around every change of the manifest
    writer.lock                 flock'd by the one writing process; says which it is
    step_000001200.pt           one torch.save file per checkpoint
    step_000001200.1.pt         the same step saved again while an abandoned one of
                                another timeline (pinned, maybe) still holds the plain name
    step_000001400.rank00003.pt rank 3's shard of a sharded checkpoint (sentinel.train.sharded)
    .step_000001400.pt.tmp-PID  a checkpoint being written (never loaded)

A checkpoint file is written to a temporary name, fsynced, renamed, and the directory
fsynced; only then is it added to the manifest (itself written atomically). A file
that is not in the manifest, or whose size or sha256 does not match it, is never
loaded. A checkpoint labelled step ``S`` holds the state *before* training step ``S``
runs (``S`` optimizer steps done), so resuming from it runs step ``S`` next.

Every read-modify-write of the manifest (save, prune, abandon, pin, unpin) holds an
exclusive ``flock`` on ``manifest.lock``, so a pin made by another process (the
controller) while the job saves is never lost, nor is the job's new entry. The lock
file is mode 0644 whatever the umask: ``flock`` needs only read access, so any process
that can read the directory's files and write the directory can take it.

One process writes: a writer store holds ``writer.lock`` for its lifetime, and a second
writing process is refused with the holder's PID and host. The manifest is read
strictly (every entry's keys and types; a file name other than the step's own is
refused, so nothing outside the directory is ever read or deleted). A save refuses a
state ``torch.load(weights_only=True)`` could not read back (loading the file back
unless every value is of a type that load always accepts), and a full disk is
reported as "disk full at DIR" with the bytes needed and free.

With a :class:`Remote` (object storage, :mod:`sentinel.train.offload`), an entry also
says whether every file of it was uploaded and verified (``uploaded``) and whether its
local files still exist (``local``); local copies beyond the newest ``keep`` are deleted
only once uploaded, and a checkpoint whose local copy is gone is read from the bucket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sentinel.train._atomic import fsync_dir, write_json_atomic
from sentinel.train.data import DataPosition

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
# Version 2 added the upload state (``uploaded``, ``local``), sharded entries and the
# ".N" file names of a step saved again; version 1 manifests are read as they are.
MANIFEST_VERSION = 2
READ_VERSIONS = (1, 2)
LOCK_FILE = "manifest.lock"
# Readable by all: the file holds nothing, and a controller running as another user must
# be able to lock it (flock works on a read-only descriptor).
LOCK_MODE = 0o644
# Newest checkpoints kept besides pinned ones: three covers "roll back ~100 steps"
# (PaLM) at the usual checkpoint interval while bounding disk use.
DEFAULT_KEEP = 3
# Read size when hashing: large enough for disk throughput, small enough for memory.
HASH_CHUNK_BYTES = 8 << 20
WRITER_LOCK_FILE = "writer.lock"
# Bytes torch.save adds per tensor (zip entry, alignment, pickle) beyond the data: used
# to tell a full disk early; the write itself is the final word.
SAVE_OVERHEAD_PER_TENSOR = 512
SAVE_OVERHEAD_BYTES = 64 * 1024
# A checkpoint's file, or that of a step saved again (".N"); then one rank's shard.
_FILE_RE = re.compile(r"^step_(\d{9,})(?:\.(\d{1,6}))?\.pt$")
_SHARD_RE = re.compile(r"^step_(\d{9,})(?:\.(\d{1,6}))?\.rank(\d{5})\.pt$")
# Temporary files of a checkpoint or of the manifest (write_json_atomic's naming).
_TMP_RE = re.compile(r"^\.(?:step_[\d.]+(?:rank\d+\.)?pt|manifest\.json)\.tmp-(\d+)$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(Exception):
    """A checkpoint is missing, unverified or unreadable; the message says which and why."""


class Remote(Protocol):
    """Object storage holding uploaded checkpoint files (sentinel.train.offload.S3Remote)."""

    url: str

    def check(self, name: str, size: int, sha256: str, md5s: list[bytes] | None = None
              ) -> None:
        """Raise CheckpointError unless object ``name`` has this size and sha256."""

    def download(self, name: str, out: BinaryIO, size: int, sha256: str) -> None:
        """Write object ``name`` to ``out``; raise CheckpointError unless it matches."""


# With a remote, entries whose only copy is in the bucket stay in the manifest (so a
# rollback or restart can use them) up to this many; older ones are left to the
# bucket's lifecycle rules.
REMOTE_ENTRIES_KEPT = 100


class SaveCancelled(CheckpointError):
    """A save was called off (a rollback past it) before it was recorded; nothing was kept."""


# A save's data is written in pieces this large, so a cancelled background save stops
# within one piece's write (tens of milliseconds), not after a whole tensor.
WRITE_PIECE_BYTES = 64 << 20


@dataclass(frozen=True)
class Shard:
    """One rank's file of a sharded checkpoint (rank = its index in the entry)."""

    file: str
    size: int
    sha256: str


def shard_file(file: str, rank: int) -> str:
    """Return the name of rank ``rank``'s shard of the checkpoint named ``file``."""
    return f"{file[:-3]}.rank{rank:05d}.pt"


def shards_digest(shards: list[Shard] | tuple[Shard, ...]) -> str:
    """Return a sharded checkpoint's sha256: over its shards' names, sizes and digests."""
    text = "".join(f"{s.file} {s.size} {s.sha256}\n" for s in shards)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class CheckpointInfo:
    """One manifest entry."""

    step: int
    file: str
    size: int
    sha256: str
    time: float
    abandoned: str | None = None  # why it left the run's timeline (a rollback past it)
    uploaded: bool = False  # every file uploaded to the store's remote and verified there
    local: bool = True  # False once the local files were deleted (uploaded first)
    # Sharded: one file per rank; ``file`` then names no file, ``size`` is the shards'
    # sum and ``sha256`` their shards_digest.
    shards: tuple[Shard, ...] = ()

    def parts(self) -> list[tuple[str, int, str]]:
        """Return (file name, size, sha256) of each file of this checkpoint."""
        if not self.shards:
            return [(self.file, self.size, self.sha256)]
        return [(s.file, s.size, s.sha256) for s in self.shards]

    def files(self) -> list[str]:
        """Return the names of this checkpoint's files."""
        return [p[0] for p in self.parts()]

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form."""
        return asdict(self)


def _file_name(step: int, generation: int = 0) -> str:
    return f"step_{step:09d}.pt" if not generation else f"step_{step:09d}.{generation}.pt"


_ENTRY_TYPES = {"step": "an integer >= 0", "size": "an integer >= 0", "sha256": "64 hex digits",
                "time": "a finite number", "abandoned": "null or a string",
                "uploaded": "true or false", "local": "true or false",
                "shards": "a list of {file, size, sha256}, rank r's file named "
                          "step_S[.N].rankRRRRR.pt"}


def _entry(i: int, c: Any, where: Path) -> CheckpointInfo:
    """Return manifest entry ``#i`` as a CheckpointInfo, or raise CheckpointError saying why."""
    at = f"checkpoint manifest {where}: entry #{i}"
    if not isinstance(c, dict):
        raise CheckpointError(f"{at} is {type(c).__name__}, not an object")
    names = {f.name for f in fields(CheckpointInfo)}
    for k in c:
        if k not in names:
            raise CheckpointError(f"{at} has unknown key {k!r} (valid: {', '.join(names)})")

    def bad(k: str, valid: str = "") -> CheckpointError:
        return CheckpointError(f"{at}: {k!r} is {c.get(k)!r} (valid: {valid or _ENTRY_TYPES[k]});"
                               " the manifest is written atomically, so this is outside damage")

    for k in ("step", "size"):
        v = c.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(k)
    m = _FILE_RE.match(c.get("file") or "") if isinstance(c.get("file"), str) else None
    if m is None or int(m.group(1)) != c["step"]:
        raise bad("file", f"{_file_name(c['step'])} or {_file_name(c['step'], 1)} ..., "
                          f"a file of step {c['step']}")
    if not isinstance(c.get("sha256"), str) or not _SHA_RE.match(c["sha256"]):
        raise bad("sha256")
    t = c.get("time")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise bad("time")
    if c.get("abandoned") is not None and not isinstance(c["abandoned"], str):
        raise bad("abandoned")
    for k in ("uploaded", "local"):
        if k in c and not isinstance(c[k], bool):
            raise bad(k)
    shards = _shards(c, bad)
    return CheckpointInfo(c["step"], c["file"], c["size"], c["sha256"], float(t),
                          c.get("abandoned"), c.get("uploaded", False), c.get("local", True),
                          shards)


def _shards(c: dict[str, Any], bad: Any) -> tuple[Shard, ...]:
    """Return an entry's shards, each file named for its step and rank, or raise bad()."""
    raw = c.get("shards", [])
    if not isinstance(raw, list):
        raise bad("shards")
    out = []
    for r, x in enumerate(raw):
        if not (isinstance(x, dict) and set(x) == {"file", "size", "sha256"}
                and isinstance(x["file"], str) and x["file"] == shard_file(c["file"], r)
                and isinstance(x["size"], int) and not isinstance(x["size"], bool)
                and x["size"] >= 0 and isinstance(x["sha256"], str)
                and _SHA_RE.match(x["sha256"])):
            raise bad("shards")
        out.append(Shard(x["file"], x["size"], x["sha256"]))
    if out and (shards_digest(out) != c["sha256"] or sum(x.size for x in out) != c["size"]):
        raise bad("shards", "shards whose sizes add up to 'size' and whose shards_digest "
                            "is 'sha256'")
    return tuple(out)


def _state_nbytes(obj: Any, seen: set[int] | None = None) -> tuple[int, int]:
    """Return (tensor data bytes, tensor count) in a state, each storage counted once."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        key = st.data_ptr()
        if key in seen:
            return 0, 1
        seen.add(key)
        return st.nbytes(), 1
    total = count = 0
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        for v in obj:
            n, k = _state_nbytes(v, seen)
            total, count = total + n, count + k
    return total, count


# What torch.load(weights_only=True) reads back without being told about more types.
_PLAIN = (str, bytes, int, float, bool, complex, type(None))


def _first_suspect(obj: Any, where: str = "state") -> tuple[str, str] | None:
    """Return (path, type) of the first value weights_only loading is unlikely to accept."""
    import torch

    # Exact types: numpy.float64 is a float subclass that weights_only refuses.
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor | torch.Size | torch.dtype
                                         | torch.device):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_suspect(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _first_suspect(v, f"{where}[{i}]")
            if found:
                return found
        return None
    t = type(obj)
    return where, f"{t.__module__}.{t.__qualname__}"


# What the load check may skip: values torch.load(weights_only=True) always reads back
# (its allowlist holds these types and the tensor rebuild of these dtypes), matched by
# exact type so a subclass, whose GLOBAL the allowlist lacks, is still load-checked.
_SURE_VALUES = (str, int, float, bool, type(None))
_SURE_CONTAINERS = (dict, OrderedDict, list, tuple)
LOAD_CHECKS = ("auto", "always")


def _surely_loadable(obj: Any, seen: set[int] | None = None) -> bool:
    """Return True if ``obj`` holds only values weights_only loading always accepts.

    Plain values, strided CPU/CUDA tensors of ordinary dtypes (not subclasses, not
    quantized) and exact dict/OrderedDict/list/tuple of them; False for anything else
    or a dict or list met twice (shared or cyclic: left to the real load).
    """
    import torch

    t = type(obj)
    if t in _SURE_VALUES:
        return True
    if t is torch.Tensor:
        return (obj.layout == torch.strided and obj.device.type in ("cpu", "cuda")
                and obj.dtype in _sure_dtypes() and not obj.is_quantized
                and not vars(obj))  # attributes set on it are pickled too
    if t not in _SURE_CONTAINERS:
        return False
    seen = set() if seen is None else seen
    if t is not tuple:  # a cycle runs through a mutable container; () is a shared singleton
        if id(obj) in seen:
            return False
        seen.add(id(obj))
    if isinstance(obj, dict):
        return all(type(k) in _SURE_VALUES and _surely_loadable(v, seen)
                   for k, v in obj.items())
    return all(_surely_loadable(v, seen) for v in obj)


@functools.cache
def _sure_dtypes() -> frozenset[Any]:
    """Return the tensor dtypes weights_only loading always rebuilds (made once)."""
    import torch

    return frozenset((torch.float64, torch.float32, torch.float16, torch.bfloat16,
                      torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                      torch.bool))


# Writers of this process, by directory (dev, inode): one lock descriptor each, shared
# by every writer store of that directory in this process.
_WRITERS: dict[tuple[int, int], list[int]] = {}  # key -> [fd, users]
_WRITERS_LOCK = threading.Lock()


def _release_writer(key: tuple[int, int]) -> None:
    with _WRITERS_LOCK:
        entry = _WRITERS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            os.close(entry[0])  # releases the flock
            del _WRITERS[key]


@contextlib.contextmanager
def _no_zip_crc() -> Iterator[None]:
    """Switch off torch.save's CRC32 of each zip record while this thread saves.

    The CRC is computed in C++ holding the GIL (about 2.5 s per GB on a slow core): in a
    background writer it stalls the training loop's Python thread. The file's sha256,
    computed while writing (hashlib releases the GIL) and checked against the manifest,
    already covers every byte. torch >= 2.6 has the switch (older torch keeps the CRC);
    its overrides are thread-local, so the loop's own torch.save calls keep their CRC.
    """
    try:
        from torch.utils.serialization import config
    except ImportError:
        yield
        return
    found = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = found


class _HashingWriter(io.RawIOBase):
    """Write through to a file while hashing and counting the bytes."""

    def __init__(self, f: BinaryIO, abort: threading.Event | None = None) -> None:
        self.f = f
        self.abort = abort
        self.sha = hashlib.sha256()
        self.size = 0
        # torch wraps an exception raised here into a RuntimeError that does not say
        # why; the save reads the original from here.
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        for at in range(0, len(mv), WRITE_PIECE_BYTES):
            if self.abort is not None and self.abort.is_set():
                raise SaveCancelled("save cancelled")
            try:
                self.f.write(mv[at:at + WRITE_PIECE_BYTES])
            except OSError as e:
                self.error = e
                raise
        self.sha.update(mv)
        self.size += len(mv)
        return len(mv)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointStore:
    """Save, verify, load and prune checkpoints in one directory.

    Only one process (rank 0) should write; pass ``writer=False`` on other ranks so they
    never save, prune or clean up, only read.
    """

    def __init__(
        self, directory: str | Path, keep: int = DEFAULT_KEEP, *, writer: bool = True,
        remote: Remote | None = None, load_check: str = "auto",
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the newest is always kept), got {keep}")
        if load_check not in LOAD_CHECKS:
            raise ValueError(f"load_check must be one of {', '.join(LOAD_CHECKS)}, "
                             f"got {load_check!r}")
        # "auto": a written file is loaded back (weights_only) only when its state holds
        # something _surely_loadable cannot vouch for; "always": every file.
        self.load_check = load_check
        self.dir = Path(directory)
        self.keep = keep
        self.writer = writer
        # With a remote, ``keep`` bounds the local copies: older ones are deleted once
        # uploaded, and read back from the bucket when needed.
        self.remote = remote
        # Threads of this process share one flock; the RLock orders them and lets a
        # locked method call another (save -> prune).
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd = -1
        if writer:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._writer_lock = weakref.finalize(self, _release_writer,
                                                 self._take_writer_lock())
            self._clean_debris()

    def _take_writer_lock(self) -> tuple[int, int]:
        """Become the directory's one writing process, or raise CheckpointError naming it."""
        st = self.dir.stat()
        key = (st.st_dev, st.st_ino)
        with _WRITERS_LOCK:
            if key in _WRITERS:
                _WRITERS[key][1] += 1  # another store of this process: the same writer
                return key
            path = self.dir / WRITER_LOCK_FILE
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
            except OSError as e:
                raise CheckpointError(f"cannot open {path} ({e.strerror}): a writer needs "
                                      f"write access to {self.dir}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                holder = holder or "another process"
                raise CheckpointError(
                    f"checkpoint directory {self.dir} is already written by {holder}; only one"
                    " process (rank 0) may write: open the store with writer=False on the other"
                    " ranks, and give each run its own directory") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _WRITERS[key] = [fd, 1]
            return key

    def close(self) -> None:
        """Give up writing (the writer lock goes when this process's last writer closes)."""
        if self.writer:
            self._writer_lock()  # a finalizer runs once, here or when the store is freed
            self.writer = False

    # -- manifest ---------------------------------------------------------------------
    def _open_lock(self) -> int:
        path = self.dir / LOCK_FILE
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             LOCK_MODE)
            except FileExistsError:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CheckpointError(
                f"cannot open the manifest lock {path} ({e.strerror}): changing the manifest "
                f"(a pin included) needs read access to it and write access to {self.dir}"
            ) from e
        os.fchmod(fd, LOCK_MODE)  # the umask must not lock other users out
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the manifest lock (re-entrant) for a read-modify-write of the manifest."""
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = self._open_lock()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fd, self._lock_fd = self._lock_fd, -1
                    os.close(fd)  # closing the last descriptor releases the flock

    def _read_manifest(self) -> dict[str, Any]:
        """Return the manifest, every entry and pin checked; CheckpointError if damaged."""
        path = self.dir / MANIFEST_FILE
        if not path.exists():
            return {"version": MANIFEST_VERSION, "checkpoints": [], "pins": {}}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint manifest {path}: cannot read it ({e}); it is written atomically, "
                "so this means outside damage: restore it or move the directory aside"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise CheckpointError(f"checkpoint manifest {path}: expected a 'checkpoints' list")
        version = data.get("version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise CheckpointError(f"checkpoint manifest {path}: version {version!r}, this "
                                  f"sentinel reads versions "
                                  f"{', '.join(map(str, READ_VERSIONS))}")
        extra = sorted(set(data) - {"version", "checkpoints", "pins"})
        if extra:
            raise CheckpointError(f"checkpoint manifest {path}: unknown key {extra[0]!r}")
        for i, c in enumerate(data["checkpoints"]):
            _entry(i, c, path)
        pins = data.setdefault("pins", {})
        if not isinstance(pins, dict):
            raise CheckpointError(f"checkpoint manifest {path}: 'pins' is not an object")
        for k, v in pins.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise CheckpointError(f"checkpoint manifest {path}: pin {k!r} is {v!r} "
                                      "(valid: a step, an integer)")
        return data

    def _write_manifest(self, data: dict[str, Any]) -> None:
        data["version"] = MANIFEST_VERSION
        data["checkpoints"].sort(key=lambda c: c["step"])
        write_json_atomic(self.dir / MANIFEST_FILE, data)

    def checkpoints(self, include_abandoned: bool = False) -> list[CheckpointInfo]:
        """Return the manifest's checkpoints, oldest first."""
        path = self.dir / MANIFEST_FILE
        out = [_entry(i, c, path) for i, c in enumerate(self._read_manifest()["checkpoints"])]
        return [c for c in out if include_abandoned or c.abandoned is None]

    def info(self, step: int) -> CheckpointInfo | None:
        """Return the manifest entry for ``step`` (abandoned ones included), or None.

        A step saved again on a new timeline while the abandoned one is pinned has two
        entries: the live one is returned.
        """
        found = [c for c in self.checkpoints(include_abandoned=True) if c.step == step]
        found.sort(key=lambda c: c.abandoned is not None)
        return found[0] if found else None

    def pins(self) -> dict[str, int]:
        """Return ``{incident_id: step}`` of pinned checkpoints."""
        return {str(k): int(v) for k, v in self._read_manifest()["pins"].items()}

    # -- writing ----------------------------------------------------------------------
    def _clean_debris(self) -> None:
        """Remove temporary files of dead writers and files the manifest never took in."""
        with self._locked():
            self._clean_debris_locked()

    def _clean_debris_locked(self) -> None:
        known = {f for c in self.checkpoints(include_abandoned=True) if c.local
                 for f in c.files()}
        for p in self.dir.iterdir():
            m = _TMP_RE.match(p.name)
            if m and not _pid_alive(int(m.group(1))):
                log.warning("removing %s: an unfinished checkpoint of a dead process", p)
                p.unlink(missing_ok=True)
            elif (_FILE_RE.match(p.name) or _SHARD_RE.match(p.name)) and p.name not in known:
                log.warning("removing %s: written but never recorded in the manifest", p)
                p.unlink(missing_ok=True)

    def free_name(self, step: int) -> str:
        """Return the file name for a new save of ``step``.

        An abandoned checkpoint of that step (another timeline's) keeps its file: it may
        be pinned now or while this save runs, and a pinned one is never overwritten.
        """
        with self._locked():
            used = {c.file for c in self.checkpoints(include_abandoned=True)
                    if c.step == step and c.abandoned is not None}
        generation = 0
        while _file_name(step, generation) in used:
            generation += 1
        return _file_name(step, generation)

    def save(self, step: int, state: dict[str, Any], *,
             abort: threading.Event | None = None) -> CheckpointInfo:
        """Write ``state`` for ``step`` atomically, record it, then apply retention.

        Raises CheckpointError, leaving no partial file, when the disk is full ("disk
        full at DIR: N bytes needed, M free") or when ``torch.load(weights_only=True)``
        could not read the state back (a numpy scalar, a Path: the message names it).
        Once ``abort`` is set (by another thread) the save stops, removes what it wrote
        and raises SaveCancelled; it is checked between pieces and before recording.
        """
        if not self.writer:
            raise CheckpointError("this CheckpointStore was opened with writer=False")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        name = self.free_name(step)
        size, sha = self._write_file(step, name, state, abort)
        entry = CheckpointInfo(step, name, size, sha, time.time())
        self._record(entry, abort)
        return entry

    def save_shard(self, step: int, name: str, rank: int, state: dict[str, Any], *,
                   abort: threading.Event | None = None) -> Shard:
        """Write rank ``rank``'s shard of checkpoint ``name`` (step ``step``); not recorded.

        Any rank may write its shard (a store opened with ``writer=False`` too); the
        writing rank records the checkpoint with :meth:`record_sharded` once every shard
        is written. Errors and ``abort`` as :meth:`save`.
        """
        if step < 0 or rank < 0:
            raise ValueError(f"step and rank must be >= 0, got {step}, {rank}")
        m = _FILE_RE.match(name)
        if m is None or int(m.group(1)) != step:
            raise ValueError(f"{name!r} is not a checkpoint name of step {step}")
        file = shard_file(name, rank)
        size, sha = self._write_file(step, file, state, abort)
        return Shard(file, size, sha)

    def record_sharded(self, step: int, name: str, shards: list[Shard], *,
                       abort: threading.Event | None = None) -> CheckpointInfo:
        """Record the sharded checkpoint whose shards (rank order) are written; prune.

        Once ``abort`` is set, raises SaveCancelled instead and removes the shards.
        """
        if not self.writer:
            raise CheckpointError("this CheckpointStore was opened with writer=False")
        for r, sh in enumerate(shards):
            if sh.file != shard_file(name, r):
                raise CheckpointError(f"shard {r} is {sh.file!r}, expected "
                                      f"{shard_file(name, r)!r}")
        entry = CheckpointInfo(step, name, sum(sh.size for sh in shards),
                               shards_digest(shards), time.time(), shards=tuple(shards))
        self._record(entry, abort)
        return entry

    def _write_file(self, step: int, name: str, state: dict[str, Any],
                    abort: threading.Event | None) -> tuple[int, str]:
        """Write ``state`` to ``name`` atomically (temp, fsync, check, rename); (size, sha256)."""
        import torch

        final = self.dir / name
        tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        data_bytes, tensors = _state_nbytes(state)
        needed = data_bytes + tensors * SAVE_OVERHEAD_PER_TENSOR + SAVE_OVERHEAD_BYTES
        self._check_space(step, needed)
        w: _HashingWriter | None = None
        try:
            with open(tmp, "wb") as f:
                w = _HashingWriter(f, abort)
                with _no_zip_crc():
                    torch.save({"sentinel_step": step, "state": state},
                               w)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            if self.load_check == "always" or not _surely_loadable(state):
                self._check_loadable(step, tmp, state)
            os.replace(tmp, final)
            fsync_dir(self.dir)
        except BaseException as e:
            # A failed save (disk full, unpicklable state) must not leave a partial file
            # per attempt behind: this PID is alive, so start-up cleaning would keep them.
            tmp.unlink(missing_ok=True)
            if abort is not None and abort.is_set():
                raise SaveCancelled(f"checkpoint step {step}: save cancelled") from None
            err = e if isinstance(e, OSError) else (w.error if w is not None else None)
            if err is not None and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full(step, needed, w.size if w else 0) from e
            if isinstance(e, OSError | RuntimeError) and err is not None:
                raise CheckpointError(f"cannot write checkpoint step {step} to {tmp}: "
                                      f"{err.strerror or err}") from e
            raise
        return w.size, w.sha.hexdigest()

    def _record(self, entry: CheckpointInfo, abort: threading.Event | None = None) -> None:
        """Add the written ``entry`` to the manifest (replacing the step's live one); prune."""
        mine = set(entry.files())
        try:
            with self._locked():
                if abort is not None and abort.is_set():
                    for f in mine:
                        (self.dir / f).unlink(missing_ok=True)
                    raise SaveCancelled(f"checkpoint step {entry.step}: save cancelled")
                data = self._read_manifest()
                path = self.dir / MANIFEST_FILE
                # The live entry of this step (a save of it again) is replaced; an
                # abandoned one stays, with its own file, until retention removes it.
                replaced = [f for i, c in enumerate(data["checkpoints"])
                            if c["step"] == entry.step and c.get("abandoned") is None
                            for f in _entry(i, c, path).files()]
                data["checkpoints"] = [c for c in data["checkpoints"]
                                       if c["step"] != entry.step
                                       or c.get("abandoned") is not None]
                data["checkpoints"].append(entry.to_json())
                self._write_manifest(data)
                for old in replaced:
                    if old not in mine:
                        (self.dir / old).unlink(missing_ok=True)
                self.prune()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full(entry.step, entry.size, entry.size) from e
            raise

    def _free_bytes(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def _check_space(self, step: int, needed: int) -> None:
        """Refuse a save that cannot fit before writing any of it."""
        if self._free_bytes() < needed:
            raise self._disk_full(step, needed, 0)

    def _disk_full(self, step: int, needed: int, written: int) -> CheckpointError:
        done = f" after writing {written} bytes" if written else ""
        return CheckpointError(
            f"disk full at {self.dir}: checkpoint step {step} failed{done}; about {needed} "
            f"bytes needed, {self._free_bytes()} free (free space, lower keep= or move the "
            "store); the previous checkpoints are intact")

    def _check_loadable(self, step: int, path: Path, state: dict[str, Any]) -> None:
        """Raise CheckpointError if torch.load(weights_only=True) cannot read ``path``.

        Loads with ``mmap=True``: the pickle is read and checked, the tensor data is only
        mapped, so this costs a fraction of the write.
        """
        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "cannot load"
            suspect = _first_suspect(state)
            where = (f"; the first suspect is {suspect[0]}, a {suspect[1]}: store plain "
                     "Python or torch values (float(x), x.tolist(), str(path))"
                     if suspect else "")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint step {step} not saved: torch.load(weights_only=True) could not "
                f"read it back ({first}){where}") from None

    def pin(self, step: int, incident: str) -> None:
        """Keep checkpoint ``step`` while ``incident`` is open, whatever retention says.

        Safe from another process (the controller) while the job saves and prunes.
        """
        with self._locked():
            data = self._read_manifest()
            if not any(c["step"] == step for c in data["checkpoints"]):
                raise CheckpointError(
                    f"cannot pin step {step}: no such checkpoint ({self._have()})")
            data["pins"][incident] = step
            self._write_manifest(data)

    def unpin(self, incident: str) -> None:
        """Release the pin of ``incident`` (no-op if it had none).

        A writer applies retention now; otherwise the job's next save does.
        """
        with self._locked():
            data = self._read_manifest()
            if data["pins"].pop(incident, None) is not None:
                self._write_manifest(data)
                if self.writer:
                    self.prune()

    def abandon_after(self, step: int, reason: str) -> list[int]:
        """Mark checkpoints newer than ``step`` as off the timeline (after a rollback).

        A writer applies retention now; otherwise (the controller, for a job it requeues)
        the job's next save does, so only the job deletes checkpoint files.
        """
        with self._locked():
            data = self._read_manifest()
            gone = []
            for c in data["checkpoints"]:
                if c["step"] > step and c.get("abandoned") is None:
                    c["abandoned"] = reason
                    gone.append(int(c["step"]))
            if gone:
                self._write_manifest(data)
                if self.writer:
                    self.prune()
        return gone

    def prune(self) -> list[int]:
        """Delete checkpoints beyond the newest ``keep``, except pinned and the last verified."""
        with self._locked():
            return self._prune_locked()

    def _prune_locked(self) -> list[int]:
        data = self._read_manifest()
        path = self.dir / MANIFEST_FILE
        entries = sorted((_entry(i, c, path) for i, c in enumerate(data["checkpoints"])),
                         key=lambda c: c.step, reverse=True)
        pinned = {int(s) for s in data["pins"].values()}
        live = [c for c in entries if c.abandoned is None]
        # By file, not step: a step can have a live entry and an abandoned (pinned) one.
        keep = {c.file for c in live[: self.keep]} | {c.file for c in entries
                                                      if c.step in pinned}
        doomed = [c for c in entries if c.file not in keep]
        if not doomed:
            return []
        # Never delete the last verified checkpoint: if nothing kept verifies, spare the
        # newest live one that does. Only a live doomed one can be that: an abandoned one is
        # never loaded again, so deleting it alone needs no hashing (a rollback abandons
        # and prunes on the loop's critical path; re-hashing gigabytes there took seconds).
        if any(c.abandoned is None for c in doomed) and not any(
                self._problem(c, None) is None for c in live if c.file in keep):
            for c in live:
                if c.file not in keep and self._problem(c, None) is None:
                    keep.add(c.file)
                    break
        deleted = [c for c in doomed if c.file not in keep]
        if self.remote is not None:
            return self._offload_prune(data, [c for c in live if c.step not in pinned], deleted)
        for c in deleted:
            for f in c.files():
                (self.dir / f).unlink(missing_ok=True)
        gone = {c.file for c in deleted}
        data["checkpoints"] = [c for c in data["checkpoints"] if c["file"] not in gone]
        self._write_manifest(data)
        return [c.step for c in deleted]

    def _offload_prune(self, data: dict[str, Any], unpinned: list[CheckpointInfo],
                       doomed: list[CheckpointInfo]) -> list[int]:
        """Retention with a remote: a live local copy goes only once uploaded.

        Its entry stays (``local`` false) so the bucket's copy can be restored, up to
        REMOTE_ENTRIES_KEPT of them; abandoned ones are dropped as without a remote.
        """
        remote_only = [c.file for c in unpinned if c.uploaded][REMOTE_ENTRIES_KEPT:]
        drop = {c.file for c in doomed if c.abandoned is not None} | set(remote_only)
        unlink = [c for c in doomed if c.local and (c.uploaded or c.abandoned is not None)]
        for c in data["checkpoints"]:
            if c["file"] in {u.file for u in unlink}:
                c["local"] = False
        data["checkpoints"] = [c for c in data["checkpoints"] if c["file"] not in drop]
        self._write_manifest(data)  # before the files go: a crash leaves debris, not holes
        for c in unlink:
            for f in c.files():
                (self.dir / f).unlink(missing_ok=True)
        return [c.step for c in unlink]

    def mark_uploaded(self, file: str) -> None:
        """Record that checkpoint file ``file`` is uploaded and verified; apply retention."""
        with self._locked():
            data = self._read_manifest()
            for c in data["checkpoints"]:
                if c["file"] == file:
                    c["uploaded"] = True
            self._write_manifest(data)
            self._prune_locked()

    # -- reading ----------------------------------------------------------------------
    def _have(self) -> str:
        steps = [c.step for c in self.checkpoints()]
        return f"checkpoints in {self.dir}: {', '.join(map(str, steps)) or 'none'}"

    def _problem(self, entry: CheckpointInfo, data: bytes | None) -> str | None:
        if entry.shards and data is None:
            for part_name, part_size, part_sha in entry.parts():
                part = CheckpointInfo(entry.step, part_name, part_size, part_sha, entry.time,
                                      local=entry.local)
                problem = self._problem(part, None)
                if problem:
                    return problem
            return None
        path = self.dir / entry.file
        if data is None and not entry.local:
            if self.remote is None:
                return f"only in object storage (local copy deleted), and {self.dir} has no remote"
            try:
                self.remote.check(entry.file, entry.size, entry.sha256)
            except CheckpointError as e:
                return str(e)
            return None
        if data is None:
            try:
                size = path.stat().st_size
            except OSError as e:
                return f"file {path} is missing ({e.strerror})"
            if size != entry.size:
                return f"file {path} is {size} bytes, the manifest says {entry.size} (truncated?)"
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK_BYTES):
                    sha.update(chunk)
            digest = sha.hexdigest()
        else:
            if len(data) != entry.size:
                return (f"file {path} is {len(data)} bytes, the manifest says {entry.size} "
                        "(truncated?)")
            digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            return (f"file {path} has sha256 {digest[:16]}..., "
                    f"the manifest says {entry.sha256[:16]}... (corrupted)")
        return None

    def verify(self, step: int) -> bool:
        """Recompute the checksum of checkpoint ``step``; log why if it does not verify."""
        entry = self.info(step)
        if entry is None:
            log.warning("checkpoint step %d: not in the manifest (%s)", step, self._have())
            return False
        problem = self._problem(entry, None)
        if problem:
            log.warning("checkpoint step %d does not verify: %s", step, problem)
        return problem is None

    def latest_verified(self, before_step: int | None = None) -> CheckpointInfo | None:
        """Return the newest verified checkpoint with step <= ``before_step`` (any if None).

        A checkpoint labelled ``S`` is the state before step ``S`` ran, so it comes
        "before" a spike seen at step ``S``. Ones that fail verification are logged and
        passed over; abandoned ones (past a rollback) are never returned.
        """
        for c in reversed(self.checkpoints()):
            if before_step is not None and c.step > before_step:
                continue
            if self.verify(c.step):
                return c
        return None

    def _live_entry(self, step: int) -> CheckpointInfo:
        entry = self.info(step)
        if entry is None:
            raise CheckpointError(f"no checkpoint for step {step} ({self._have()})")
        if entry.abandoned is not None:
            raise CheckpointError(
                f"checkpoint step {step} was abandoned ({entry.abandoned}); {self._have()}"
            )
        return entry

    def require_verified(self, step: int) -> CheckpointInfo:
        """Check checkpoint ``step`` without loading it (the file is hashed in chunks).

        Return its manifest entry, or raise CheckpointError saying why it cannot be used.
        """
        entry = self._live_entry(step)
        problem = self._problem(entry, None)
        if problem:
            raise CheckpointError(f"checkpoint step {step} refused: {problem}")
        return entry

    def read_verified(self, step: int) -> bytes:
        """Read checkpoint ``step`` and check it against the manifest, or raise CheckpointError."""
        entry = self._live_entry(step)
        if entry.shards:
            raise CheckpointError(f"checkpoint step {step} is sharded ({len(entry.shards)} "
                                  "ranks): each rank reads its own with read_verified_shard")
        return self._read_part(entry)

    def read_verified_shard(self, step: int, rank: int, world: int) -> bytes:
        """Read rank ``rank``'s shard of sharded checkpoint ``step`` and check it.

        Raises CheckpointError when the checkpoint is not sharded, was saved by another
        number of ranks than ``world``, or the shard does not verify.
        """
        entry = self._live_entry(step)
        if len(entry.shards) != world:
            have = f"{len(entry.shards)} shards" if entry.shards else "not sharded"
            raise CheckpointError(f"checkpoint step {step} is {have}; this job has {world} "
                                  "ranks (a sharded checkpoint restores on as many ranks as "
                                  "saved it)")
        name, size, sha = entry.parts()[rank]
        return self._read_part(CheckpointInfo(step, name, size, sha, entry.time,
                                              local=entry.local))

    def _read_part(self, entry: CheckpointInfo) -> bytes:
        """Read one file of a checkpoint (local, or from the remote) and check it."""
        step = entry.step
        if not entry.local:
            return self._read_remote(entry)
        try:
            data = (self.dir / entry.file).read_bytes()
        except OSError as e:
            raise CheckpointError(
                f"checkpoint step {step}: cannot read {self.dir / entry.file} ({e.strerror})"
            ) from e
        problem = self._problem(entry, data)
        if problem:
            raise CheckpointError(f"checkpoint step {step} refused: {problem}")
        return data

    def _read_remote(self, entry: CheckpointInfo) -> bytes:
        """Download a checkpoint whose local copy is gone; its sha256 is checked on the way."""
        if self.remote is None:
            raise CheckpointError(f"checkpoint step {entry.step} is only in object storage "
                                  f"and {self.dir} was opened without a remote")
        buf = io.BytesIO()
        self.remote.download(entry.file, buf, entry.size, entry.sha256)
        return buf.getvalue()

    @staticmethod
    def deserialize(data: bytes, map_location: Any = "cpu") -> dict[str, Any]:
        """Turn verified checkpoint bytes into the saved state dict."""
        import torch

        try:
            obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
            state: dict[str, Any] = obj["state"]
        except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "cannot load"
            raise CheckpointError(
                f"checkpoint verifies but cannot be loaded ({type(e).__name__}: {e}); was it "
                "saved by another sentinel/torch version or with objects weights_only refuses?"
            ) from e
        return state

    def load(self, step: int, map_location: Any = "cpu") -> dict[str, Any]:
        """Load verified checkpoint ``step`` or raise CheckpointError saying why not."""
        return self.deserialize(self.read_verified(step), map_location)

    def load_latest(
        self, before_step: int | None = None, map_location: Any = "cpu"
    ) -> tuple[CheckpointInfo, dict[str, Any]] | None:
        """Load the newest checkpoint that verifies (reading each file once), or None."""
        for c in reversed(self.checkpoints()):
            if before_step is not None and c.step > before_step:
                continue
            try:
                data = self.read_verified(c.step)
            except CheckpointError as e:
                log.warning("%s; trying the previous checkpoint", e)
                continue
            return c, self.deserialize(data, map_location)
        return None


# -- training state -------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Capture the RNG states of python, numpy (if installed), torch and CUDA (if used)."""
    import torch

    st: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # numpy is optional on the training side
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        st["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (parts absent here are skipped)."""
    import torch

    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    # A checkpoint loaded with map_location="cuda" brings the RNG byte tensors to the
    # GPU; torch only takes them back as CPU ByteTensors.
    torch.set_rng_state(st["torch"].cpu())
    if "numpy" in st:
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            name, keys, pos, has_gauss, cached = st["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in st["cuda"]])


def dist_rank_world(group: Any = None) -> tuple[Any, int, int]:
    """Return (torch.distributed or None, rank, world size) of the running job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(group), dist.get_world_size(group)
    return None, 0, 1


def training_state(
    model: Any, optimizer: Any, scheduler: Any, position: DataPosition,
    extra: dict[str, Any] | None = None, *, group: Any = None,
) -> dict[str, Any]:
    """Collect everything a run needs to continue exactly: weights, optimizer, data, RNG.

    Under ``torch.distributed`` this is a collective (call it on every rank at the same
    step): ``rng_ranks`` holds every rank's RNG states, so each rank restores its own.
    ``group`` is the process group to gather over (a gloo group keeps it off the GPU).
    """
    rng = rng_state()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "data": position.to_dict(),
        "extra": extra or {},
    }
    dist, _, world = dist_rank_world(group)
    if dist is not None and world > 1:
        gathered: list[Any] = [None] * world
        # Tensors travel as CPU bytes: a gloo group cannot carry CUDA tensors.
        dist.all_gather_object(gathered, rng, group=group)
        state["rng_ranks"] = gathered
    return state


def restore_training_state(
    state: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, *, group: Any = None,
) -> DataPosition:
    """Load a :func:`training_state` dict into the objects; return the data position.

    Each rank takes its own RNG states from ``rng_ranks`` when the checkpoint has one per
    rank of this job; otherwise (saved by another world size, or before per-rank RNG
    was saved) every rank takes the saver's, and a different world size is logged.
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    _, rank, world = dist_rank_world(group)
    per_rank = state.get("rng_ranks")
    if per_rank is not None and len(per_rank) == world:
        set_rng_state(per_rank[rank])
    else:
        if per_rank is not None:
            log.warning("checkpoint holds RNG states of %d ranks, this job has %d: every "
                        "rank takes the saving rank's", len(per_rank), world)
        set_rng_state(state["rng"])
    return DataPosition.from_dict(state["data"])

