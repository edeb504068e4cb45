"""Burn-in on a real GPU: short versions of bench/burnin_gpu.py (pytest -m gpu)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and an NVIDIA GPU"),
]

from sentinel.burnin import correctness  # noqa: E402
from sentinel.burnin.api import run_burnin  # noqa: E402
from sentinel.burnin.config import BurninConfig  # noqa: E402
from sentinel.burnin.memtest import run_memtest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHORT = dict(duration=5, warmup=2, memtest_seconds=1)


@pytest.fixture(scope="module")
def unloaded():
    return run_burnin(BurninConfig(gpus=[0], **SHORT))


def test_unloaded_gpu_is_ok_with_nvml_matched_by_uuid(unloaded):
    v, rec = unloaded.verdicts[0], unloaded.records[0]
    print(json.dumps(v.to_dict(), indent=1))
    assert v.ok, [p.evidence for p in v.problems]
    assert rec.nvml_index is not None and rec.nvml, rec.nvml_error
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(rec.nvml_index)
    assert pynvml.nvmlDeviceGetUUID(h) == rec.uuid
    assert len(rec.perf) >= 4
    assert rec.correctness is not None and rec.correctness.checks > 0
    assert rec.correctness.mismatches == 0 and rec.correctness.reference_mismatches == 0
    assert rec.memtest is not None and rec.memtest.bytes_tested > 2**30
    assert rec.memtest.mismatches == 0
    assert v.stats.temperature_max_c is not None and v.stats.power_mean_w is not None


def test_checker_has_no_false_positives_on_tensor_cores_and_catches_a_flip():
    dev = torch.device("cuda", 0)
    a, b = correctness.make_inputs(torch, 8192, seed=3)
    a, b = a.to(dev), b.to(dev)
    checker = correctness.ResultChecker(torch, a.float() @ b.float(), "bf16")
    c = torch.empty(8192, 8192, dtype=torch.bfloat16, device=dev)
    for _ in range(5):
        torch.matmul(a, b, out=c)
        checker.check(c)
    assert checker.result()[:2] == (5, 0)
    c[17, 4000] = c[17, 4000] * -4 + 50
    checker.check(c)
    assert checker.result()[1] == 1


def test_memtest_on_gpu_memory_is_clean():
    r = run_memtest(torch, torch.device("cuda", 0), 2 * 2**30, seconds=1.0)
    assert r.mismatches == 0 and r.passes >= 1 and r.bytes_tested == 2 * 2**30


def test_competing_process_is_flagged(unloaded):
    floor = unloaded.verdicts[0].baseline_tflops
    if floor is None:  # a model without a shipped floor: this GPU's unloaded speed - 7%
        floor = (unloaded.verdicts[0].stats.tflops_mean or 0) * 0.93
    hog = subprocess.Popen([sys.executable, str(ROOT / "bench" / "burnin_gpu.py"), "--hog",
                            "--gpu", "0", "--seconds", "40"], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "ready"
        rep = run_burnin(BurninConfig(gpus=[0], duration=6, warmup=2, memtest_seconds=0,
                                      baseline_tflops=floor))
    finally:
        hog.terminate()
        hog.wait(timeout=30)
    v = rep.verdicts[0]
    print(json.dumps(v.to_dict(), indent=1))
    assert v.verdict.value in ("LOW_FLOPS", "THROTTLED")
    assert any("TFLOPS" in p.evidence for p in v.problems)


def test_fp8_runs_and_checks_results():
    if torch.cuda.get_device_capability(0) < (9, 0):
        pytest.skip("fp8 needs compute capability 9.0+")
    rep = run_burnin(BurninConfig(gpus=[0], dtype="fp8", duration=3, warmup=1,
                                  memtest_seconds=0))
    v, rec = rep.verdicts[0], rep.records[0]
    print(json.dumps(v.to_dict(), indent=1))
    assert rec.error is None and rec.perf
    assert rec.correctness is not None and rec.correctness.mismatches == 0


def test_cli_json_lines_and_textfile(tmp_path):
    pytest.importorskip("yaml")  # the CLI's config loader needs PyYAML
    prom = tmp_path / "burnin.prom"
    r = subprocess.run([sys.executable, "-m", "sentinel", "burnin", "--gpus", "0",
                        "--duration", "3", "--warmup", "1", "--memtest-seconds", "1", "--json",
                        "--textfile", str(prom)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "progress" in kinds and kinds[-1] == "verdict", r.stderr
    assert r.returncode == events[-1]["exit_code"]
    from sentinel.burnin.report import BurninReport

    report = BurninReport.from_dict(events[-1]["report"])  # what a controller reads back
    assert report.exit_code == r.returncode and [rec.cuda_index for rec in report.records] == [0]
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(prom.read_text())}
    assert {"sentinel_burnin_tflops", "sentinel_burnin_ok", "sentinel_burnin_verdict"} <= names
