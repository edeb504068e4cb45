"""Imports follow the flow collect -> store -> detect -> act -> tell (ARCHITECTURE.md).

Parsed with ``ast`` over sentinel/: a part may import the shared modules below the parts
and the parts its row allows; nothing imports the controller but the applications that
wire it in (the CLI, the demo, preflight and the deployment helpers).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.imports import PACKAGE as ROOT
from tests.support.imports import imports_with_lines

# The parts, each a package under sentinel/.
PARTS = ("agent", "train", "rules", "burnin", "notify", "dashboards", "controller")
# The applications on top: they wire parts together and may import any of them, the
# controller included (preflight uses its Slurm client and spare pool; `sentinel deploy`
# its Slurm client; the demo reads its journal for the view and the summary). The
# examples are applications of train (the GPT example).
APPS = ("cli", "__main__", "demo", "preflight", "deploy", "examples")
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


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """Return (line, module) for each sentinel module ``path`` imports (a name imported
    from a package counts as that module when it is one)."""
    out = []
    for line, mod in imports_with_lines(path):
        if mod == "sentinel" or not mod.startswith("sentinel."):
            continue
        sub = root / mod.split(".", 1)[1].replace(".", "/")
        if mod.count(".") >= 2 and not (sub.with_suffix(".py").exists() or sub.is_dir()):
            mod = mod.rsplit(".", 1)[0]  # a name (class, function) from a module
        out.append((line, mod))
    return out


def _violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = path.relative_to(root).with_suffix("").parts[0]
        for line, mod in _imports(path, root):
            parts = mod.split(".")
            target = parts[1]
            if target == src or target == "__version__":
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {mod}"
            if target == "controller" and src not in APPS:
                bad.append(f"{where}: only the applications ({', '.join(APPS)}) import the "
                           "controller")
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
    (fake / "preflight").mkdir()
    (fake / "preflight" / "z.py").write_text("from sentinel.controller import spares\n")
    found = _violations(fake)
    assert not any("preflight/z.py" in v for v in found)  # an application may
    assert any("rules/x.py:1 imports sentinel.notify" in v for v in found)
    assert any("only the applications (cli, __main__, demo, preflight, deploy, examples) "
               "import the controller" in v for v in found)
