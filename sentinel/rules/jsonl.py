"""Read detector-input JSON lines: one step per line. The one parser of the format.

Keys: ``step``, ``loss``, optional ``grad_norm``, ``tokens_per_sec``, ``time``,
``node``, ``rank``; NaN and infinities spelled as :mod:`sentinel.jsonnum` writes them.
``sentinel detect FILE`` and ``sentinel notify send --steps-jsonl`` both read through
it, so a bad line gets the same message (file, line, why, what is valid) from each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentinel.jsonnum import VALID as _NUM_VALID
from sentinel.jsonnum import decode_number
from sentinel.rules.window import StepPoint

# A step record is about 150 bytes; a longer "line" is not this format (a binary file,
# a log with no newlines) and is refused before it is held in memory whole.
MAX_LINE_BYTES = 64 * 1024


class InputError(ValueError):
    """A line of the input is not valid; the message names the line and why."""


def _number(where: str, key: str, v: Any, *, optional: bool, nonneg: bool = False) -> float | None:
    if v is None and optional:
        return None
    try:
        x = decode_number(v)
    except ValueError:
        raise InputError(f"{where}: {key!r} is {v!r} (valid: {_NUM_VALID}"
                         f"{', or null' if optional else ''})") from None
    if nonneg and x < 0:
        raise InputError(f"{where}: {key!r} is {v!r} (valid: a number >= 0)")
    return x


def parse_line(where: str, line: str) -> StepPoint:
    """Parse one JSON line into a StepPoint or raise InputError naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, arrays nested deeply
        raise InputError(f"{where}: not a step record ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object like "
                         f'{{"step": 1, "loss": 2.5}}, got {type(obj).__name__}')
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"{where}: 'step' is {step!r} (valid: an integer >= 0)")
    if "loss" not in obj:
        raise InputError(f"{where}: 'loss' is missing (valid: {_NUM_VALID})")
    loss = _number(where, "loss", obj["loss"], optional=False)
    assert loss is not None
    gn = _number(where, "grad_norm", obj.get("grad_norm"), optional=True)
    tps = _number(where, "tokens_per_sec", obj.get("tokens_per_sec"), optional=True, nonneg=True)
    t = _number(where, "time", obj.get("time"), optional=True)
    if t is not None and not math.isfinite(t):
        raise InputError(f"{where}: 'time' is {obj.get('time')!r} (valid: finite unix seconds)")
    node = obj.get("node")
    if node is not None and not isinstance(node, str):
        raise InputError(f"{where}: 'node' is {node!r} (valid: a string)")
    rank = obj.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise InputError(f"{where}: 'rank' is {rank!r} (valid: an integer)")
    return StepPoint(step=step, loss=loss, grad_norm=gn, tokens_per_sec=tps, time=t,
                     node=node, rank=rank)


def iter_steps(path: str | Path) -> Iterator[StepPoint]:
    """Yield the steps of a JSON-lines file one line at a time; a bad line raises InputError.

    Lines are read one by one, so a caller that keeps only some steps (a plot around
    one step of a run of millions) holds only those.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            for i, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
                where = f"{p}:{i}"
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"{where}: line longer than {MAX_LINE_BYTES} bytes "
                                     "(valid: one step record per line)")
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")  # columns count within the line
                except UnicodeDecodeError:
                    raise InputError(f"{where}: not UTF-8 text (valid: JSON lines)") from None
                if line.strip():
                    yield parse_line(where, line)
    except OSError as e:
        raise InputError(f"{p}: cannot read it ({e.strerror or e})") from None


def read_steps(path: str | Path) -> list[StepPoint]:
    """Read a JSON-lines file of steps; a file with none raises InputError."""
    out = list(iter_steps(path))
    if not out:
        raise InputError(f"{path}: no step records (valid: one JSON object per line)")
    return out
