"""The persisted list of global batch ranges a run must skip, with who added each and why.

A range ``A:B`` is half-open like Python's ``range(A, B)``: batches ``A .. B-1`` are
skipped. Batch indices are positions in the fault-free batch sequence (see
:mod:`sentinel.train.data`), not optimizer steps: after a skip the two differ.
"""

from __future__ import annotations

import bisect
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sentinel.train._atomic import write_json_atomic

PLAN_FILE = "skip_plan.json"
PLAN_VERSION = 1


class SkipPlanError(ValueError):
    """A skip range or plan file is not valid; the message says what would be."""


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
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SkipPlanError(f"skip plan {self.path}: cannot read it ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("ranges"), list):
            raise SkipPlanError(
                f"skip plan {self.path}: expected an object with a 'ranges' list "
                f"(version {PLAN_VERSION})"
            )
        ranges: list[SkipRange] = []
        for i, r in enumerate(data["ranges"]):
            try:
                ranges.append(
                    SkipRange(
                        int(r["start"]), int(r["end"]), str(r.get("added_by", "")),
                        str(r.get("reason", "")), float(r.get("time", 0.0)),
                    )
                )
            except (KeyError, TypeError, ValueError) as e:
                raise SkipPlanError(
                    f"skip plan {self.path}: range #{i} {r!r} needs integer 'start' and 'end'"
                ) from e
        self._set(ranges)

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
        """Add ranges all-or-nothing; raise SkipPlanError for a bad or overlapping one."""
        t = time.time() if now is None else now
        new = []
        for start, end in ranges:
            _check_range(start, end)
            new.append(SkipRange(start, end, added_by, reason, t))
        self._set(self._ranges + new)  # raises before anything changes
        if save:
            self.save()
        return new

    def check(self, ranges: list[tuple[int, int]]) -> None:
        """Raise SkipPlanError if ``ranges`` could not be added; change nothing."""
        probe = SkipPlan(None)
        probe._set(self._ranges + [SkipRange(s, e) for s, e in ranges])

    def save(self) -> None:
        """Write the plan file atomically (no-op for an in-memory plan)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.path, {"version": PLAN_VERSION, "ranges": [asdict(r) for r in self._ranges]}
        )

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
