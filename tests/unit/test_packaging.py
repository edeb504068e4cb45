"""The wheel carries the package data the commands need, and they work from it alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (the worktree gets no build/ directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "sentinel", src / "sentinel",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # No build isolation: uses the installed setuptools (a dev dependency), no network.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp / "dist").glob("sentinel-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_holds_the_demo_replay_and_the_shipped_tables(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("sentinel/gpu/replays/h100_load.json", "sentinel/burnin/baselines.json",
                 "sentinel/rules/default_rules.yml", "sentinel/py.typed",
                 # what `sentinel demo` runs: no file of the checkout outside the package
                 "sentinel/rules/prometheus.rules.yml", "sentinel/examples/gpt.py",
                 "sentinel/burnin/replays/h200-pass.report.json",
                 "sentinel/burnin/replays/h200-pass.jsonl",
                 "sentinel/burnin/replays/h200-fail.report.json",
                 "sentinel/burnin/replays/h200-fail.jsonl", "sentinel/demo/cli.py",
                 "sentinel/localstack/slurm.py"):
        assert path in names, f"{path} is not in {wheel.name}"
    # The recording and alert rules are the checkout's alerts/sentinel.rules.yml (the
    # package holds a link to it; the wheel a copy).
    z = zipfile.ZipFile(wheel)
    assert z.read("sentinel/rules/prometheus.rules.yml") == (
        ROOT / "alerts" / "sentinel.rules.yml").read_bytes()


@pytest.mark.slow
def test_demo_replay_loads_from_the_installed_wheel_alone(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    check = textwrap.dedent(f"""
        import sentinel, sentinel.demo
        from sentinel.gpu.nvml import Nvml
        from sentinel.gpu.nvml_replay import ReplayBackend
        site = {str(site)!r}
        assert sentinel.__file__.startswith(site), sentinel.__file__
        assert str(sentinel.demo.REPLAY).startswith(site), sentinel.demo.REPLAY
        nv = Nvml(ReplayBackend.from_file(sentinel.demo.REPLAY))
        from sentinel.burnin.replay import recorded
        from sentinel.demo.stack import RECORDING_RULES
        from sentinel.demo.story import demo_rules
        assert RECORDING_RULES.is_file() and str(RECORDING_RULES).startswith(site)
        assert "job_hostname:sentinel_train_tokens_per_second:sum" in RECORDING_RULES.read_text()
        assert '"verdict"' in recorded("pass") and demo_rules()["rules"]
        nv.init()
        s = nv.sample(0)
        print(nv.devices()[0].name, s.power_w, s.errors)
    """)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("NVIDIA H100 80GB HBM3 ") and r.stdout.strip().endswith("[]")
