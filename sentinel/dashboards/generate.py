"""Generate the dashboards' JSON files from code, byte-for-byte reproducibly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentinel.dashboards import fleet, node, training

# (file stem, builder). Adding a dashboard means adding a module and a line here.
DASHBOARDS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("sentinel-training", training.build),
    ("sentinel-node", node.build),
    ("sentinel-fleet", fleet.build),
]


def render(dashboard: dict[str, Any]) -> str:
    """Serialise a dashboard as stable JSON (sorted keys, 2-space indent, final newline)."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """Build every dashboard and return {file name: JSON text}."""
    return {f"{stem}.json": render(build()) for stem, build in DASHBOARDS}


def generate(out_dir: Path) -> list[Path]:
    """Write every dashboard into ``out_dir`` and return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in build_all().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
