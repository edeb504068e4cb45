"""The project's own static checks, so `make test` (and CI) fail on a lint or type error."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Packages where vulture must find no dead code (the others are checked by their owners).
DEAD_CODE_FREE = ("sentinel/rules/", "sentinel/notify/", "sentinel/dashboards/")


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_ruff_is_clean():
    r = _run("ruff", "check", "sentinel", "tests", "bench", "examples", "scripts", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    """mypy over the package (strict on rules/, train/, as pyproject.toml configures)."""
    r = _run("mypy", "sentinel", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_vulture_finds_no_dead_code_in_rules_notify_dashboards():
    """Unused code at vulture's 60% confidence; uses anywhere in the tree count."""
    r = _run("vulture", "sentinel", "tests", "bench", "examples", "scripts",
             "--min-confidence", "60", timeout=120)
    dead = [ln for ln in r.stdout.splitlines() if ln.startswith(DEAD_CODE_FREE)]
    assert r.returncode in (0, 3) and not dead, "\n".join(dead) or r.stderr


def imported_test_modules(path: Path, source: str) -> list[str]:
    """Return the test modules (anything under tests/ but tests.support) ``source`` imports."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    bad = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = sorted({f"{base}.{a.name}" if base == "tests" else base for a in node.names})
        else:
            continue
        bad += [n for n in names if (n == "tests" or n.startswith("tests."))
                and n != "tests.support" and not n.startswith("tests.support.")]
    return bad


def test_tests_import_no_other_test_module():
    """Shared test helpers live in tests/support/; a test module is never imported."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "node_modules" not in path.parts:
            found += [f"{path.relative_to(ROOT)}: {m}"
                      for m in imported_test_modules(path, path.read_text(encoding="utf-8"))]
    assert found == [], "move these helpers to tests/support/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from tests.unit.agent.test_gpu import render_collector", ["tests.unit.agent.test_gpu"]),
        ("def f():\n    import tests.integration.test_x as x", ["tests.integration.test_x"]),
        ("from tests.unit.agent import conftest", ["tests.unit.agent"]),
        ("from tests import unit", ["tests.unit"]),
        ("from .fake_slack import TOKEN", ["tests.unit.notify.fake_slack"]),
        ("from . import conftest", ["tests.unit.notify"]),
        ("from tests.support.metrics import value\nfrom tests import support\nimport json", []),
    ],
)
def test_the_import_check_sees_every_form(source, found):
    path = ROOT / "tests" / "unit" / "notify" / "test_x.py"
    assert imported_test_modules(path, source) == found
