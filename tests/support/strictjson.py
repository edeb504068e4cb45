"""Parse JSON as strictly as non-Python clients do: no bare NaN/Infinity tokens."""

from __future__ import annotations

import json
from typing import Any


def strict_loads(text: str) -> Any:
    """Parse JSON, failing on the bare NaN/Infinity tokens Python's json accepts."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} token in {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)
