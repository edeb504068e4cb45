"""The persisted list of global batch ranges a run must skip, with who added each and why.

A range ``A:B`` is half-open like Python's ``range(A, B)``: batches ``A .. B-1`` are
skipped. Batch indices are positions in the fault-free batch sequence (see
:mod:`sentinel.train.data`), not optimizer steps: after a skip the two differ.

Writers hold an exclusive ``flock`` on ``skip_plan.lock`` around each change and read
the file again under it, so two writers never lose each other's ranges; a change
reaches memory only after it reached the disk. The file is read strictly: a version
other than 1, an unknown key, a bound that is not an integer (``1e400``, ``true``,
``1.5``) are refused with the key and what is valid.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sentinel.config import read_regular_file
from sentinel.train._atomic import write_json_atomic

PLAN_FILE = "skip_plan.json"
PLAN_VERSION = 1
LOCK_FILE = "skip_plan.lock"
# A plan of thousands of ranges is ~200 KB; a file far larger is not a plan.
MAX_PLAN_BYTES = 16 << 20


class SkipPlanError(ValueError):
    """A skip range or plan file is not valid; the message says what would be."""


_RANGE_KEYS = ("start", "end", "added_by", "reason", "time")
_VALID_RANGE = ('valid: {"start": int >= 0, "end": int > start, "added_by": str, '
                '"reason": str, "time": unix seconds}')


@dataclass(frozen=True)
class SkipRange:
    """Skip global batches ``start .. end-1``; ``added_by`` and ``reason`` are the history."""

    start: int
    end: int
    added_by: str = ""
    reason: str = ""
    time: float = 0.0

    def __contains__(self, batch: object) -> bool:
        return isinstance(batch, int) and self.start <= batch < self.end

    def __len__(self) -> int:
        return self.end - self.start

    def text(self) -> str:
        """Return the range as ``A:B``."""
        return f"{self.start}:{self.end}"


def parse_range(text: str) -> tuple[int, int]:
    """Parse ``A:B`` (half-open, A < B, both >= 0) or raise SkipPlanError saying why."""
    parts = text.strip().split(":")
    if len(parts) != 2:
        raise SkipPlanError(
            f"skip range {text!r}: expected START:END, e.g. 1200:1500 "
            "(half-open: skips batches START..END-1)"
        )
    try:
        start, end = int(parts[0]), int(parts[1])
    except ValueError:
        raise SkipPlanError(
            f"skip range {text!r}: START and END must be integers (global batch indices)"
        ) from None
    _check_range(start, end)
    return start, end


def _check_range(start: int, end: int) -> None:
    if isinstance(start, bool) or isinstance(end, bool):
        raise SkipPlanError(f"skip range {start}:{end}: batch indices must be integers")
    if start < 0 or end < 0:
        raise SkipPlanError(
            f"skip range {start}:{end}: negative batch index (valid: 0 <= START < END)"
        )
    if end <= start:
        raise SkipPlanError(
            f"skip range {start}:{end}: END must be greater than START "
            "(ranges are half-open, START:END skips batches START..END-1)"
        )


def _parse_range(i: int, r: Any, where: object) -> SkipRange:
    """Return range ``#i`` of a plan file, or raise SkipPlanError naming the bad key."""
    at = f"skip plan {where}: range #{i}"
    if not isinstance(r, dict):
        raise SkipPlanError(f"{at} is {type(r).__name__}; {_VALID_RANGE}")
    for k in r:
        if k not in _RANGE_KEYS:
            raise SkipPlanError(f"{at} has unknown key {k!r}; {_VALID_RANGE}")
    for k in ("start", "end"):
        v = r.get(k)
        if isinstance(v, bool) or not isinstance(v, int):
            raise SkipPlanError(f"{at}: {k!r} is {v!r}; {_VALID_RANGE}")
    for k in ("added_by", "reason"):
        if not isinstance(r.get(k, ""), str):
            raise SkipPlanError(f"{at}: {k!r} is {r[k]!r}; {_VALID_RANGE}")
    t = r.get("time", 0.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise SkipPlanError(f"{at}: 'time' is {t!r}; {_VALID_RANGE}")
    try:
        _check_range(r["start"], r["end"])
    except SkipPlanError as e:
        raise SkipPlanError(f"{at}: {e}") from None
    return SkipRange(r["start"], r["end"], r.get("added_by", ""), r.get("reason", ""), float(t))


def _parse_plan(obj: Any, where: object) -> list[SkipRange]:
    """Return the ranges of a parsed plan file, or raise SkipPlanError saying what is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("ranges"), list):
        raise SkipPlanError(f"skip plan {where}: expected an object with a 'ranges' list "
                            f"(version {PLAN_VERSION})")
    version = obj.get("version")
    if isinstance(version, bool) or version != PLAN_VERSION:
        raise SkipPlanError(f"skip plan {where}: version {version!r}, this sentinel reads "
                            f"version {PLAN_VERSION} (written by a newer one?)")
    extra = sorted(set(obj) - {"version", "ranges"})
    if extra:
        raise SkipPlanError(f"skip plan {where}: unknown key {extra[0]!r} (valid: version, "
                            "ranges)")
    return [_parse_range(i, r, where) for i, r in enumerate(obj["ranges"])]


def _union(a: list[SkipRange], b: list[SkipRange]) -> list[SkipRange]:
    """Return the ranges of ``a`` plus those of ``b`` that ``a`` lacks (by start and end)."""
    have = {(r.start, r.end) for r in a}
    return a + [r for r in b if (r.start, r.end) not in have]


class SkipPlan:
    """Global batch ranges to skip, kept sorted and non-overlapping, saved atomically.

    ``SkipPlan(run_dir)`` loads ``run_dir/skip_plan.json`` if it exists. ``SkipPlan(None)``
    is an in-memory plan (tests, or ranks that do not own the file).
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.path = Path(directory) / PLAN_FILE if directory is not None else None
        self._ranges: list[SkipRange] = []
        self._starts: list[int] = []
        if self.path is not None and self.path.exists():
            self.reload()

    @property
    def ranges(self) -> list[SkipRange]:
        """Return the ranges, sorted by start."""
        return list(self._ranges)

    def reload(self) -> None:
        """Read the plan file again (another process may have added ranges)."""
        self._set(self._read_disk())

    def _read_disk(self) -> list[SkipRange]:
        """Return the ranges in the plan file (none if there is no file); strict."""
        if self.path is None or not self.path.exists():
            return []
        data = read_regular_file(str(self.path), "skip plan", max_bytes=MAX_PLAN_BYTES,
                                 valid="valid: the JSON file SkipPlan writes",
                                 error=SkipPlanError)
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SkipPlanError(f"skip plan {self.path}: cannot read it ({e})") from None
        return _parse_plan(obj, self.path)

    def _set(self, ranges: list[SkipRange]) -> None:
        ranges = sorted(ranges, key=lambda r: r.start)
        for r in ranges:
            _check_range(r.start, r.end)
        for a, b in zip(ranges, ranges[1:], strict=False):
            if b.start < a.end:
                raise SkipPlanError(
                    f"skip range {b.text()} overlaps {a.text()} "
                    f"(added by {a.added_by or 'unknown'}: {a.reason or 'no reason'}); "
                    "ranges must not overlap"
                )
        self._ranges = ranges
        self._starts = [r.start for r in ranges]

    def add(
        self,
        ranges: list[tuple[int, int]],
        *,
        added_by: str,
        reason: str,
        save: bool = True,
        now: float | None = None,
    ) -> list[SkipRange]:
        """Add ranges all-or-nothing; raise SkipPlanError for a bad or overlapping one.

        With ``save``, the file is read again under the lock, the ranges are added to
        what it holds (other writers' ranges are kept) and written; memory changes only
        once that write succeeded.
        """
        t = time.time() if now is None else now
        new = []
        for start, end in ranges:
            _check_range(start, end)
            new.append(SkipRange(start, end, added_by, reason, t))
        if not save or self.path is None:
            self._set(self._ranges + new)  # raises before anything changes
            return new
        with self._locked():
            merged = _union(self._read_disk(), self._ranges)
            probe = SkipPlan(None)
            probe._set(merged + new)  # raises before anything changes
            self._write(probe._ranges)
            self._set(probe._ranges)
        return new

    def check(self, ranges: list[tuple[int, int]]) -> None:
        """Raise SkipPlanError if ``ranges`` could not be added; change nothing.

        Checked against this plan and, for a plan with a file, what the file holds now.
        """
        probe = SkipPlan(None)
        have = _union(self._read_disk(), self._ranges) if self.path is not None else self._ranges
        probe._set(have + [SkipRange(s, e) for s, e in ranges])

    def replace(self, ranges: list[dict[str, Any]]) -> None:
        """Take the ranges of another plan's :meth:`to_json` (another rank's), in memory."""
        self._set(_parse_plan({"version": PLAN_VERSION, "ranges": ranges}, "ranges"))

    def save(self) -> None:
        """Write the plan file atomically (no-op for an in-memory plan)."""
        if self.path is None:
            return
        with self._locked():
            self._write(self._ranges)

    def _write(self, ranges: list[SkipRange]) -> None:
        assert self.path is not None
        try:
            write_json_atomic(
                self.path, {"version": PLAN_VERSION, "ranges": [asdict(r) for r in ranges]})
        except OSError as e:
            raise SkipPlanError(f"cannot save the skip plan {self.path} ({e.strerror or e}); "
                                "nothing was added") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the plan's lock (exclusive flock; threads and processes alike)."""
        assert self.path is not None
        d = self.path.parent
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd = os.open(d / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SkipPlanError(f"cannot lock the skip plan {d / LOCK_FILE} "
                                f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def is_skipped(self, batch: int) -> bool:
        """Return True if global batch ``batch`` is in a skipped range."""
        i = bisect.bisect_right(self._starts, batch) - 1
        return i >= 0 and batch < self._ranges[i].end

    def next_unskipped(self, batch: int) -> int:
        """Return the first batch index >= ``batch`` that is not skipped."""
        i = bisect.bisect_right(self._starts, batch) - 1
        while i >= 0 and i < len(self._ranges) and self._ranges[i].start <= batch:
            if batch < self._ranges[i].end:
                batch = self._ranges[i].end
            i += 1
        return batch

    def to_json(self) -> list[dict[str, Any]]:
        """Return the ranges as JSON-ready dicts."""
        return [asdict(r) for r in self._ranges]

    def __len__(self) -> int:
        return len(self._ranges)
