"""sentinel/gpu is below the parts, and burn-in reaches NVML only through it."""

from __future__ import annotations

from tests.support.imports import PACKAGE, imports

# Modules below the parts: any part may import them; they import no part.
SHARED = ("sentinel.gpu", "sentinel.config", "sentinel.protocol", "sentinel.systemd",
          "sentinel.jsonnum", "sentinel.secretfile")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offenders(package: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = sorted(m for m in imports(path)
                     if _under(m, ("sentinel",)) and m != "sentinel" and not _under(m, allowed))
        if bad:
            found[str(path.relative_to(PACKAGE.parent))] = bad
    return found


def test_gpu_imports_no_part():
    assert _offenders("gpu", ("sentinel.gpu",)) == {}


def test_burnin_imports_only_shared_modules_and_itself():
    assert _offenders("burnin", ("sentinel.burnin", *SHARED)) == {}


def test_only_sentinel_gpu_nvml_imports_pynvml():
    users = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                   if "pynvml" in imports(p))
    assert users == ["sentinel/gpu/nvml.py"]


def test_the_checker_sees_a_lazy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from sentinel.agent.nvml import Nvml\n    import pynvml\n")
    assert {"sentinel.agent.nvml", "pynvml"} <= imports(f)
