"""Per-model floors: the shipped table (``baselines.json``) or a file replacing it.

Layout (JSON, or YAML when PyYAML is installed)::

    {"bf16": {"NVIDIA H100 80GB HBM3": {"floor_tflops": 630, "source": "..."}},
     "fp8": {...},
     "interconnect": {"NVIDIA H200": {"nvlink": {
         "copy_gbps": 300, "allreduce_busbw_gbps": {"2": 280, "8": 330},
         "source": "..."}}}}

A model may also map straight to a number (``"NVIDIA H100 80GB HBM3": 630``). In
``interconnect`` (GB/s, 1e9 bytes) the key under the model is the kind of link
(:data:`sentinel.burnin.links.TOPOLOGIES`: nvlink, pix, ..., sys); the all-reduce floor
is per number of GPUs; ``null`` is a floor not measured yet (the source says so). The
shipped table is JSON so the burn-in loads it on a GPU box without PyYAML.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.burnin.config import DTYPES, BurninConfigError
from sentinel.burnin.links import TOPOLOGIES

SHIPPED = Path(__file__).with_name("baselines.json")
INTERCONNECT = "interconnect"
LINK_KINDS = TOPOLOGIES  # the kinds of link a floor may be given for


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
        if k not in (*DTYPES, INTERCONNECT, "about"):
            raise BurninConfigError(
                f"baselines file {p}: unknown key {k!r} (valid: {', '.join(DTYPES)}, "
                f"{INTERCONNECT}, about)")
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


@dataclass(frozen=True)
class LinkFloor:
    """Bandwidth floors for one GPU model over one kind of link (None: not measured yet)."""

    copy_gbps: float | None = None
    allreduce_busbw_gbps: dict[int, float] = field(default_factory=dict)  # by GPU count
    source: str = ""


def _gbps(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise BurninConfigError(f"{where}: {value!r} is not valid (valid: a positive number "
                                f"of GB/s, or null for a floor not measured yet)")
    return float(value)


def _link_floor(entry: Any, where: str) -> LinkFloor:
    if not isinstance(entry, dict):
        raise BurninConfigError(f"{where}: must map copy_gbps, allreduce_busbw_gbps, source")
    unknown = set(entry) - {"copy_gbps", "allreduce_busbw_gbps", "source"}
    if unknown:
        raise BurninConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (valid: "
                                f"copy_gbps, allreduce_busbw_gbps, source)")
    by_count: dict[int, float] = {}
    ar = entry.get("allreduce_busbw_gbps") or {}
    if not isinstance(ar, dict):
        raise BurninConfigError(f"{where}.allreduce_busbw_gbps: must map a GPU count "
                                f"(\"2\", \"8\") to GB/s")
    for n, v in ar.items():
        if not str(n).isdigit() or int(n) < 2:
            raise BurninConfigError(f"{where}.allreduce_busbw_gbps: key {n!r} is not a GPU "
                                    f"count (valid: 2, 3, ...)")
        floor = _gbps(v, f"{where}.allreduce_busbw_gbps.{n}")
        if floor is not None:
            by_count[int(n)] = floor
    return LinkFloor(copy_gbps=_gbps(entry.get("copy_gbps"), f"{where}.copy_gbps"),
                     allreduce_busbw_gbps=by_count, source=str(entry.get("source", "")))


def load_link_floors(path: str | Path = "") -> dict[str, dict[str, LinkFloor]]:
    """Return ``{model: {link kind: LinkFloor}}`` from ``path`` (or the shipped table)."""
    p = Path(path) if path else SHIPPED
    data = _parse(p)
    table = data.get(INTERCONNECT) if isinstance(data, dict) else None
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise BurninConfigError(f"baselines file {p}: {INTERCONNECT} must map model names "
                                f"to link kinds")
    out: dict[str, dict[str, LinkFloor]] = {}
    for model, kinds in table.items():
        if model == "about":
            continue
        where = f"baselines file {p}: {INTERCONNECT}.{model}"
        if not isinstance(kinds, dict):
            raise BurninConfigError(f"{where}: must map a link kind ({', '.join(LINK_KINDS)}) "
                                    f"to floors")
        for kind, entry in kinds.items():
            if kind not in LINK_KINDS:
                raise BurninConfigError(f"{where}: unknown link kind {kind!r} (valid: "
                                        f"{', '.join(LINK_KINDS)})")
            out.setdefault(str(model), {})[kind] = _link_floor(entry, f"{where}.{kind}")
    return out


def link_floor(floors: Mapping[str, Mapping[str, LinkFloor]], model: str,
               kind: str) -> LinkFloor | None:
    """Return the floors for ``model`` over ``kind`` (model matched exactly, then case-blind)."""
    kinds = floors.get(model)
    if kinds is None:
        kinds = {k.lower(): v for k, v in floors.items()}.get(model.lower())
    return None if kinds is None else kinds.get(kind)
