"""Imports follow the flow collect -> store -> detect -> act -> tell (ARCHITECTURE.md).

Parsed with ``ast`` over sentinel/: a part may import the shared modules below the parts
and the parts its row allows; nothing imports the controller but the top-level CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "sentinel"

# The parts, each a package under sentinel/.
PARTS = ("agent", "train", "rules", "burnin", "notify", "dashboards", "controller")
# The applications on top: they wire parts together and may import any of them.
APPS = ("cli", "__main__", "demo")
# What each part may import besides the shared modules and itself. A dotted name allows
# that module of a part only (the controller uses the request side of train, not the
# training loop's side; burn-in's report format, not its runner).
ALLOWED: dict[str, set[str]] = {
    "agent": set(),
    "train": set(),
    "rules": set(),
    "burnin": set(),
    "notify": {"rules"},
    "dashboards": set(),
    "controller": {"rules", "notify", "train.request", "burnin.report"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sentinel":
                out += [(node.lineno, f"sentinel.{a.name}") for a in node.names]
            elif node.module.startswith("sentinel."):
                out += [(node.lineno, node.module)]
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                        if (ROOT / node.module.split(".", 1)[1].replace(".", "/") / a.name
                            ).with_suffix(".py").exists()]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("sentinel.")]
    return out


def _violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = path.relative_to(root).with_suffix("").parts[0]
        for line, mod in _imports(path):
            parts = mod.split(".")
            target = parts[1]
            if target == src or target == "__version__":
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {mod}"
            if target == "controller" and src not in ("cli",):
                bad.append(f"{where}: only sentinel/cli.py imports the controller")
                continue
            if src in APPS or src not in PARTS:
                if src not in APPS and target in PARTS:
                    bad.append(f"{where}: a shared module imports no part")
                continue
            if target not in PARTS:
                continue  # a shared module
            allowed = ALLOWED[src]
            dotted = ".".join(parts[1:3])
            if target not in allowed and dotted not in allowed:
                bad.append(f"{where}: {src} may import only the shared modules"
                           + (f" and {', '.join(sorted(allowed))}" if allowed else ""))
    return bad


def test_imports_follow_the_flow():
    assert _violations() == []


def test_the_rule_catches_a_violation(tmp_path):
    """The checker itself must fail on an import against the flow."""
    fake = tmp_path / "sentinel"
    for part in ("rules", "notify", "agent"):
        (fake / part).mkdir(parents=True)
        (fake / part / "__init__.py").write_text("")
    (fake / "rules" / "x.py").write_text("from sentinel.notify import slack\n")
    (fake / "agent" / "y.py").write_text("import sentinel.controller.loop\n")
    found = _violations(fake)
    assert any("rules/x.py:1 imports sentinel.notify" in v for v in found)
    assert any("only sentinel/cli.py imports the controller" in v for v in found)
