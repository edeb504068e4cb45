"""Imports of sentinel's modules, read with ast (for the layering and import-flow tests)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sentinel"


def imports_with_lines(path: Path) -> list[tuple[int, str]]:
    """Return (line, module) for every import in ``path``, at the top or in a function.

    ``from a.b import c`` gives both ``a.b`` and ``a.b.c`` (``c`` may be a module).
    """
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def imports(path: Path) -> set[str]:
    """Return every module ``path`` imports, at the top or inside a function."""
    return {m for _line, m in imports_with_lines(path)}
