"""Read detector-input JSON lines: one step per line.

Keys: ``step``, ``loss``, optional ``grad_norm``, ``tokens_per_sec``, ``time``,
``node``, ``rank``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sentinel.rules.window import StepPoint

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NUM_VALID = 'a number, or "NaN", "Infinity", "-Infinity"'


class InputError(ValueError):
    """A line of the input is not valid; the message names the line and why."""


def _number(where: str, key: str, v: Any, *, optional: bool, nonneg: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, str) and v in NONFINITE:
        return NONFINITE[v]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(f"{where}: {key!r} is {v!r} (valid: {_NUM_VALID}"
                         f"{', or null' if optional else ''})")
    if nonneg and v < 0:
        raise InputError(f"{where}: {key!r} is {v!r} (valid: a number >= 0)")
    return float(v)


def parse_line(where: str, line: str) -> StepPoint:
    """Parse one JSON line into a StepPoint or raise InputError naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
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


def parse_lines(lines: Iterable[str], name: str = "<input>") -> list[StepPoint]:
    """Parse every non-blank line; the first bad one raises InputError."""
    out = []
    for i, line in enumerate(lines, start=1):
        if line.strip():
            out.append(parse_line(f"{name}:{i}", line))
    if not out:
        raise InputError(f"{name}: no step records (valid: one JSON object per line)")
    return out


def read_steps(path: str | Path) -> list[StepPoint]:
    """Read a JSON-lines file of steps."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{p}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text (valid: JSON lines)") from None
    return parse_lines(text.splitlines(), str(p))
