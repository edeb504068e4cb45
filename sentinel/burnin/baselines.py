"""Per-model TFLOPS floors: the shipped table (``baselines.json``) or a file replacing it.

Layout (JSON, or YAML when PyYAML is installed)::

    {"bf16": {"NVIDIA H100 80GB HBM3": {"floor_tflops": 630, "source": "..."}},
     "fp8": {...}}

A model may also map straight to a number (``"NVIDIA H100 80GB HBM3": 630``). The
shipped table is JSON so the burn-in loads it on a GPU box without PyYAML.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sentinel.burnin.config import DTYPES, BurninConfigError

SHIPPED = Path(__file__).with_name("baselines.json")


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BurninConfigError(f"baselines file {path}: cannot read it ({e.strerror or e})") from e
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise BurninConfigError(f"baselines file {path}: not valid JSON: {e}") from e
    try:
        import yaml  # noqa: PLC0415 - optional: only a YAML override needs it
    except ImportError as e:
        raise BurninConfigError(
            f"baselines file {path}: reading YAML needs PyYAML (pip install PyYAML), "
            f"or give a .json file"
        ) from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BurninConfigError(f"baselines file {path}: not valid YAML: {e}") from e


def load_baselines(path: str | Path = "", dtype: str = "bf16") -> dict[str, float]:
    """Return ``{model name: floor TFLOPS}`` for ``dtype`` from ``path`` (or the shipped table)."""
    p = Path(path) if path else SHIPPED
    data = _parse(p)
    if not isinstance(data, dict):
        raise BurninConfigError(
            f"baselines file {p}: top level must map a dtype ({', '.join(DTYPES)}) to models")
    for k in data:
        if k not in DTYPES and k != "about":
            raise BurninConfigError(
                f"baselines file {p}: unknown key {k!r} (valid: {', '.join(DTYPES)}, about)")
    table = data.get(dtype) or {}
    if not isinstance(table, dict):
        raise BurninConfigError(f"baselines file {p}: {dtype} must map model names to floors")
    out: dict[str, float] = {}
    for model, entry in table.items():
        value = entry.get("floor_tflops") if isinstance(entry, dict) else entry
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise BurninConfigError(
                f"baselines file {p}: {dtype}.{model}: floor {value!r} is not valid "
                f"(valid: a positive number of TFLOPS, as a number or as floor_tflops: N)")
        out[str(model)] = float(value)
    return out
