"""``sentinel burnin`` argument errors and the no-GPU exit (this CI machine has no GPU)."""

import subprocess
import sys

import pytest

from sentinel.burnin.api import BurninUnavailable, run_burnin
from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.cli import main

torch = pytest.importorskip("torch")
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@needs_no_cuda
def test_without_cuda_it_exits_2_and_says_why():
    r = subprocess.run([sys.executable, "-m", "sentinel", "burnin", "--duration", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "needs CUDA and an NVIDIA GPU" in r.stderr
    assert r.stdout == ""


@needs_no_cuda
def test_api_raises_unavailable_without_cuda():
    with pytest.raises(BurninUnavailable, match="CUDA and an NVIDIA GPU"):
        run_burnin(BurninConfig(duration=5))


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "a,1"], "--gpus: 'a' is not a GPU index"),
    (["--gpus", "0,0"], "names a GPU twice"),
    (["--gpus", ","], "--gpus: empty list"),
    (["--duration", "0"], "burnin.duration: 0.0 is below the minimum 1.0"),
    (["--tolerance", "2"], "burnin.tolerance: 2.0 is above the maximum 0.9"),
    (["--memtest-fraction", "1.5"], "burnin.memtest_fraction: 1.5 is above the maximum 0.98"),
    (["--check-every", "0"], "burnin.check_every: 0 is below the minimum 1"),
    (["--size", "64"], "burnin.size: 64 is below the minimum 128"),
    (["--duration", "nan"], "burnin.duration: nan is not a finite number"),
    (["--bandwidth-tolerance", "1.5"], "burnin.bandwidth_tolerance: 1.5 is above the maximum"),
])
def test_bad_flags_exit_2_naming_the_flag(capsys, argv, message):
    assert main(["burnin", *argv]) == 2
    err = capsys.readouterr().err
    assert "bad configuration" in err and message in err


def test_unknown_dtype_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["burnin", "--dtype", "fp16"])
    assert e.value.code == 2
    assert "invalid choice: 'fp16' (choose from 'bf16', 'fp8')" in capsys.readouterr().err


def test_config_file_and_environment_are_checked(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "sentinel.yml"
    cfg.write_text("burnin:\n  durationn: 10\n")
    assert main(["burnin", "--config", str(cfg)]) == 2
    assert "burnin.durationn: unknown key (valid keys:" in capsys.readouterr().err
    monkeypatch.setenv("SENTINEL_BURNIN_DURATION", "soon")
    assert main(["burnin"]) == 2
    assert "SENTINEL_BURNIN_DURATION (burnin.duration): 'soon' is not a number" in (
        capsys.readouterr().err)


def test_bad_baselines_file_fails_before_any_gpu_work(tmp_path, capsys):
    b = tmp_path / "floors.yml"
    b.write_text("bf16:\n  NVIDIA H100 80GB HBM3: -1\n")
    assert main(["burnin", "--baselines", str(b)]) == 2
    assert "floor -1 is not valid" in capsys.readouterr().err


def test_config_validate_is_used_by_the_api():
    with pytest.raises(BurninConfigError, match="burnin.warmup: -1.0 is below the minimum"):
        BurninConfig(warmup=-1.0).validate()
    with pytest.raises(BurninConfigError, match="not valid \\(valid: bf16, fp8\\)"):
        BurninConfig(dtype="int8").validate()


def test_v2_flags_reach_the_config(monkeypatch):
    import argparse

    from sentinel.burnin import cli

    monkeypatch.setenv("SENTINEL_BURNIN_DURATION", "25")
    ap = argparse.ArgumentParser()
    cli.register(ap.add_subparsers())
    cfg = cli._load(ap.parse_args(["burnin", "--no-interconnect", "--warmup-mode", "fixed",
                                   "--bandwidth-tolerance", "0.3"]))
    assert (cfg.interconnect, cfg.warmup_mode, cfg.bandwidth_tolerance) == (False, "fixed", 0.3)
    assert cfg.duration == 25.0
    monkeypatch.delenv("SENTINEL_BURNIN_DURATION")
    cfg = cli._load(ap.parse_args(["burnin"]))
    assert (cfg.interconnect, cfg.warmup_mode, cfg.duration, cfg.tolerance) == (
        True, "steady", 13.0, 0.10)


def test_bad_warmup_mode_from_the_environment_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("SENTINEL_BURNIN_WARMUP_MODE", "lukewarm")
    assert main(["burnin"]) == 2
    assert "burnin.warmup_mode: 'lukewarm' is not valid (valid: steady, fixed)" in (
        capsys.readouterr().err)
