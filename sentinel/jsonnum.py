"""Non-finite numbers in JSON: written as "NaN", "Infinity", "-Infinity" strings.

JSON has no NaN or Infinity, and a NaN loss is a finding, not an error, so every
JSON sentinel writes (the agent's step stream, findings, the notify outbox, burn-in
records, the example's detector-input log) spells them as these strings and reads
them back through :func:`decode_number`. :func:`dumps` is strict: it never writes the
bare ``NaN`` token that Python's ``json`` would and most JSON parsers refuse.
"""

from __future__ import annotations

import json
import math
from typing import Any

NONFINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
VALID = 'a number, or "NaN", "Infinity", "-Infinity"'


def encode_number(v: float | None) -> float | str | None:
    """Return ``v``, or its string spelling when it is NaN or infinite."""
    if v is None or math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


def encode(v: Any) -> Any:
    """Return a copy of a value tree with every non-finite float spelled as a string.

    Mappings get string keys and tuples become lists, as ``json`` writes them.
    """
    if isinstance(v, float):
        return encode_number(v)
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [encode(x) for x in v]
    return v


def decode_number(v: Any) -> float:
    """Return the float a JSON value stands for: a number or one of the three spellings.

    Raises ValueError naming what was found and what is valid.
    """
    if isinstance(v, str):
        if v in NONFINITE:
            return NONFINITE[v]
    elif isinstance(v, int | float) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(f"{v!r} is too large for a float (valid: {VALID})") from None
    raise ValueError(f"{v!r} is not a number (valid: {VALID})")


def decode(v: Any) -> Any:
    """Return a copy of a value tree with the three spellings (at any depth) as floats.

    For trees whose schema is not known (evidence, free-form data): any string that is
    exactly "NaN", "Infinity" or "-Infinity" is taken for the number.
    """
    if isinstance(v, str):
        return NONFINITE.get(v, v)
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        return {k: decode(x) for k, x in v.items()}
    return v


def dumps(obj: Any, **kwargs: Any) -> str:
    """Serialise ``obj`` as strict JSON with non-finite floats spelled as strings."""
    return json.dumps(encode(obj), allow_nan=False, **kwargs)
