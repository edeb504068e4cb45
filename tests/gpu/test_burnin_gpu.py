"""Burn-in on a real GPU (pytest -m gpu); the multi-GPU tests also carry ``multigpu``.

On one GPU the ``multigpu`` tests skip saying they need two; on the 2-GPU machine they
run. bench/burnin_v2_gpu.py measures the figures of docs/BENCHMARKS.md; these tests
hold the behaviour: a default verdict within 30 s, the competing process and the
wrong results still caught in that shorter run, the memory test on a nearly full GPU,
and the links between two GPUs.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and an NVIDIA GPU"),
]
N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_two = pytest.mark.skipif(N_GPUS < 2, reason=f"needs 2 GPUs; this machine has {N_GPUS}")

from sentinel.burnin import correctness, runner  # noqa: E402
from sentinel.burnin.api import run_burnin  # noqa: E402
from sentinel.burnin.config import DEFAULT_DURATION_S, BurninConfig  # noqa: E402
from sentinel.burnin.memtest import PATTERNS, run_memtest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "burnin_v2_gpu.py"
SHORT = dict(duration=5, warmup=2, memtest_seconds=1)
GIB = 1 << 30


def show(report):
    print(json.dumps([v.to_dict() for v in report.verdicts], indent=1)[:6000])
    if report.interconnect is not None:
        print(json.dumps({k: v for k, v in report.interconnect.to_dict().items()
                          if k != "record"}, indent=1))


class Helper:
    """A helper process from bench/burnin_v2_gpu.py (competing matmuls, or memory held)."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, str(BENCH), *args], stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.startswith("ready"), f"helper {args} did not start: {line!r}"
        self.ready_line = line.strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def default_run():
    """The default burn-in of GPU 0: what `sentinel burnin --gpus 0` does."""
    t0 = time.monotonic()
    rep = run_burnin(BurninConfig(gpus=[0]))
    return rep, time.monotonic() - t0


def test_default_verdict_within_30_s_with_the_memory_test_overlapped(default_run):
    rep, wall = default_run
    show(rep)
    v, rec = rep.verdicts[0], rep.records[0]
    assert wall <= 30.0, f"verdict took {wall:.1f} s"
    assert v.ok, [p.evidence for p in v.problems]
    assert rec.warmup_end == "steady", (rec.warmup_end, rec.warmup_s)
    m = rec.memtest
    assert m is not None and m.concurrent and m.note == "" and m.mismatches == 0
    assert m.patterns == list(PATTERNS) and m.bytes_tested > 10 * GIB
    assert m.bytes_tested <= 0.85 * m.free_bytes
    assert rec.correctness.checks > 0 and rec.correctness.mismatches == 0
    assert v.stats.work_seconds >= DEFAULT_DURATION_S - 1.0


def test_one_gpu_says_the_interconnect_check_needs_two(default_run):
    ic = default_run[0].interconnect
    assert ic.verdict.value == "SKIPPED"
    assert ic.notes[0].startswith("interconnect not tested: it needs two or more GPUs")


def test_unloaded_gpu_nvml_matched_by_uuid(default_run):
    rep = default_run[0]
    rec = rep.records[0]
    assert rec.nvml_index is not None and rec.nvml, rec.nvml_error
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(rec.nvml_index)
    assert pynvml.nvmlDeviceGetUUID(h) == rec.uuid
    assert rep.verdicts[0].stats.temperature_max_c is not None


def test_competing_process_is_low_flops_in_the_default_run(default_run):
    floor = default_run[0].verdicts[0].baseline_tflops
    if floor is None:  # a model without a shipped floor: this GPU's unloaded speed - 10%
        floor = (default_run[0].verdicts[0].stats.tflops_mean or 0) * 0.90
    with Helper("--hog", "0", "--seconds", "60"):
        rep = run_burnin(BurninConfig(gpus=[0], baseline_tflops=floor))
    show(rep)
    v = rep.verdicts[0]
    assert v.verdict.value == "LOW_FLOPS", [p.evidence for p in v.problems]
    assert "floor" in v.problems[0].evidence


def test_wrong_results_and_bad_memory_are_caught_in_the_default_run(monkeypatch):
    """A GPU whose every result has one bad element, and one flipped memory bit."""
    prepare = runner.GpuWorker._prepare

    def faulty(self, dev):
        mm, c, checker, ref_bad = prepare(self, dev)

        def bad_mm():
            out = mm()
            c[17, 4000] += 1e4  # queued on the same stream, after the matmul
            return out

        return bad_mm, c, checker, ref_bad

    real_memtest = runner.run_memtest

    def planted(*a, **kw):
        def flip(chunks):
            chunks[0][12345] ^= 1 << 33

        return real_memtest(*a, **kw, after_write=flip)

    monkeypatch.setattr(runner.GpuWorker, "_prepare", faulty)
    monkeypatch.setattr(runner, "run_memtest", planted)
    rep = run_burnin(BurninConfig(gpus=[0]))
    show(rep)
    v = rep.verdicts[0]
    assert [p.verdict.value for p in v.problems][:2] == ["WRONG_RESULTS", "MEMORY_ERRORS"]
    assert rep.exit_code == 1 and rep.wall_seconds <= 30.0
    assert rep.records[0].memtest.first_bad_offset == 12345 * 8


def test_memory_test_on_a_nearly_full_gpu_stays_within_what_is_free():
    torch.cuda.empty_cache()  # blocks cached by earlier tests would count as held
    with Helper("--fill", "0", "--leave-gib", "4", "--seconds", "120") as h:
        free = torch.cuda.mem_get_info(0)[0]
        rep = run_burnin(BurninConfig(gpus=[0], **SHORT))
    show(rep)
    print(h.ready_line, free)
    v, m = rep.verdicts[0], rep.records[0].memtest
    assert free < 6 * GIB
    assert rep.records[0].error is None and v.ok, [p.evidence for p in v.problems]
    assert m.note == "" and m.mismatches == 0 and m.passes >= len(PATTERNS)
    assert m.free_bytes < 6 * GIB and 0 < m.bytes_tested <= 0.85 * m.free_bytes


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
    r = run_memtest(torch, torch.device("cuda", 0), 2 * GIB, seconds=1.0)
    assert r.mismatches == 0 and r.passes >= 1 and r.bytes_tested == 2 * GIB


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
    r = subprocess.run([sys.executable, "-m", "sentinel", "burnin", "--duration", "3",
                        "--warmup", "1", "--memtest-seconds", "1", "--json",
                        "--textfile", str(prom)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "progress" in kinds and kinds[-1] == "verdict", r.stderr
    assert r.returncode == events[-1]["exit_code"]
    from sentinel.burnin.report import BurninReport

    report = BurninReport.from_dict(events[-1]["report"])  # what a controller reads back
    assert report.exit_code == r.returncode
    assert [rec.cuda_index for rec in report.records] == list(range(N_GPUS))
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(prom.read_text())}
    assert {"sentinel_burnin_tflops", "sentinel_burnin_ok", "sentinel_burnin_verdict",
            "sentinel_burnin_interconnect_verdict"} <= names
    if N_GPUS >= 2:
        assert {"sentinel_burnin_copy_bandwidth_bytes_per_second",
                "sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second"} <= names


@pytest.mark.multigpu
@needs_two
def test_links_between_two_gpus_are_measured_and_judged():
    events = []
    rep = run_burnin(BurninConfig(gpus=[0, 1], **SHORT), events.append)
    show(rep)
    ic = rep.interconnect
    assert ic is not None and ic.verdict.value == "OK", [p.evidence for p in ic.problems]
    copies = ic.record.copies
    assert [(m.src, m.dst) for m in copies] == [(0, 1), (1, 0)]
    for m in copies:
        assert m.error is None and m.wrong_bytes == 0 and m.gbps > 1.0, m
    a = ic.record.allreduce
    assert a is not None and a.error is None, a
    assert a.backend == "nccl" and a.version and a.wrong_elements == 0
    assert a.busbw_gbps > 1.0 and a.env.get("NCCL_NVLS_ENABLE") == "0"
    # Both GPUs measured over the same seconds: each entered "measure" within ~1 s.
    first = {}
    for e in events:
        if e["event"] == "progress":
            for g in e["gpus"]:
                if g["phase"] == "measure":
                    first.setdefault(g["gpu"], e["elapsed"])
    assert set(first) == {0, 1} and abs(first[0] - first[1]) <= 1.5, first


@pytest.mark.multigpu
@needs_two
def test_competitor_on_gpu0_is_low_flops_against_gpu1():
    # No floor (1 TFLOPS), so only the comparison with the node's best GPU can flag it.
    with Helper("--hog", "0", "--seconds", "60"):
        rep = run_burnin(BurninConfig(gpus=[0, 1], baseline_tflops=1.0, interconnect=False))
    show(rep)
    v0, v1 = rep.verdicts[0], rep.verdicts[1]
    assert v0.verdict.value == "LOW_FLOPS", [p.evidence for p in v0.problems]
    assert "below the node's best GPU (GPU 1:" in v0.problems[0].evidence
    assert v1.ok, [p.evidence for p in v1.problems]

