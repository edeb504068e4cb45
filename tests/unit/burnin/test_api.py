"""``run_burnin`` end to end on the CPU: real torch tensors, a stand-in ``torch.cuda``.

The stand-in maps the CUDA device to the CPU and times "CUDA events" with the host
clock, so the runner, the result check, the sampler (replayed H100 NVML) and the verdict
run their real code. Only what needs a GPU is replaced.
"""

import copy
import json
import re
import threading
import time

import pytest

from sentinel.burnin import allreduce
from sentinel.burnin.api import run_burnin
from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.burnin.report import BurninReport, format_table, json_line, render_textfile
from sentinel.burnin.verdict import Verdict
from sentinel.cli import main
from sentinel.gpu.nvml import Nvml
from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend
from tests.support.fake_cuda import FakeTorch

torch = pytest.importorskip("torch")

LOAD = H100_LOAD
SMALL = {"size": 128, "duration": 1.0, "warmup": 0.0, "memtest_seconds": 0.0,
         "hang_timeout": 1.0, "sample_interval": 0.1, "check_every": 4}


def _replay():
    backend = ReplayBackend.from_file(LOAD)
    return backend, backend.dump["devices"][0]["uuid"]


def _alive(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_cpu_run_end_to_end_gives_a_verdict_with_readings():
    backend, uuid = _replay()
    events = []
    rep = run_burnin(BurninConfig(**SMALL), events.append, nvml=Nvml(backend),
                     torch=FakeTorch(uuid))
    assert [e["event"] for e in events][0] == "start"
    (rec,), (v,) = rep.records, rep.verdicts
    assert rec.error is None and rec.perf and rec.nvml_index == 0
    assert rec.correctness is not None and rec.correctness.checks > 0
    assert rec.correctness.mismatches == 0
    # A CPU is far below the H100 floor, and says so.
    assert v.verdict is Verdict.LOW_FLOPS and "floor" in v.problems[0].evidence
    assert not _alive("burnin-")


def test_a_hung_gpu_is_no_work_within_the_hang_timeout():
    backend, uuid = _replay()
    t0 = time.monotonic()
    rep = run_burnin(BurninConfig(**SMALL), nvml=Nvml(backend), torch=FakeTorch(uuid, hung=True))
    assert time.monotonic() - t0 < 10
    v = rep.verdicts[0]
    assert v.verdict is Verdict.NO_WORK
    assert "no work completed for 1 s (GPU hung?)" in v.problems[0].evidence
    assert rep.exit_code == 1


def test_a_failing_callback_stops_the_workers_and_the_sampler():
    # The controller passes on_event; if it raises, no GPU may go on burning and no NVML
    # thread may be left sampling behind the caller's back.
    backend, uuid = _replay()

    def on_event(e):
        if e["event"] == "progress":
            raise RuntimeError("consumer went away")

    # hang_timeout bounds the join; 5 s, not 1, so a loaded 2-core CI machine stays in it.
    cfg = BurninConfig(**{**SMALL, "duration": 60.0, "hang_timeout": 5.0})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="consumer went away"):
        run_burnin(cfg, on_event, nvml=Nvml(backend), torch=FakeTorch(uuid))
    assert time.monotonic() - t0 < 10
    assert not _alive("burnin-"), _alive("burnin-")


def test_a_failing_start_callback_releases_nvml():
    backend, uuid = _replay()

    def on_event(e):
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        run_burnin(BurninConfig(**SMALL), on_event, nvml=Nvml(backend), torch=FakeTorch(uuid))
    assert not _alive("burnin-nvml")


@pytest.mark.parametrize("name, message", [
    ("burnin.txt", "does not end in .prom"),
    ("sub", "is a directory"),
])
def test_bad_textfile_path_fails_before_any_gpu_work(tmp_path, name, message):
    (tmp_path / "sub.prom").mkdir()
    path = tmp_path / (name if name != "sub" else "sub.prom")
    with pytest.raises(BurninConfigError, match=message):
        run_burnin(BurninConfig(**SMALL, textfile=str(path)),
                   torch=FakeTorch("GPU-x"))  # fails before torch is used at all


def test_unwritable_textfile_directory_exits_2_naming_it(tmp_path, capsys):
    # A file where the directory should be: no user (root included) can create it.
    (tmp_path / "blocker").write_text("")
    path = tmp_path / "blocker" / "burnin.prom"
    assert main(["burnin", "--textfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "burnin.textfile: cannot write in" in err and "blocker" in err


def test_late_textfile_failure_keeps_the_results(tmp_path, monkeypatch):
    backend, uuid = _replay()
    import sentinel.burnin.api as api_mod

    def full_disk(path, report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api_mod, "write_textfile", full_disk)
    rep = run_burnin(BurninConfig(**SMALL, textfile=str(tmp_path / "b.prom")),
                     nvml=Nvml(backend), torch=FakeTorch(uuid))
    assert rep.verdicts and rep.records[0].perf
    assert rep.textfile_error and "No space left on device" in rep.textfile_error
    assert any("not written" in n for n in rep.notes)


def _two_gpu_replay():
    """The H100 dump with a second GPU, NVLink between the two."""
    backend = ReplayBackend.from_file(LOAD)
    devs = backend.dump["devices"]
    second = copy.deepcopy(devs[0])
    second["uuid"] = devs[0]["uuid"][:-1] + ("0" if devs[0]["uuid"][-1] != "0" else "1")
    second["index"] = 1
    second["pci_info"] = {**second["pci_info"], "busId": "00000000:00:07.0"}
    devs.append(second)
    backend.dump["device_count"] = 2
    devs[0]["links"] = {"1": {"p2p_nvlink": 0, "common_ancestor": 50}}
    second["links"] = {"0": {"p2p_nvlink": 0, "common_ancestor": 50}}
    return backend, [d["uuid"] for d in devs]


@pytest.mark.slow
def test_two_gpus_burn_together_and_their_links_are_tested(tmp_path, monkeypatch):
    """Steady warm-up beside the memory test, copies both ways, a gloo all-reduce."""
    monkeypatch.setattr(allreduce, "ALLREDUCE_BYTES", 1 << 20)  # CPU all-reduces are slow
    backend, uuids = _two_gpu_replay()
    free = 64 << 20
    cfg = BurninConfig(**{**SMALL, "warmup": 1.5, "memtest_seconds": 0.1,
                          "hang_timeout": 10.0}, textfile=str(tmp_path / "burnin.prom"))
    events = []
    rep = run_burnin(cfg, events.append, nvml=Nvml(backend),
                     torch=FakeTorch(uuids, free_bytes=free), allreduce_backend="gloo")
    for rec in rep.records:
        assert rec.error is None and rec.perf
        m = rec.memtest
        assert m is not None and m.concurrent and m.free_bytes == free
        assert 0 < m.bytes_tested <= 0.85 * free and m.patterns == ["walking_ones", "address",
                                                                     "random"]
        assert rec.warmup_end in ("steady", "cap", "peers") and rec.warmup_s >= 0
        assert rec.setup_s is not None
    ic = rep.interconnect
    assert ic is not None and ic.topology == "nvlink"
    assert [(c.src, c.dst, c.topology) for c in ic.record.copies] == [(0, 1, "nvlink"),
                                                                      (1, 0, "nvlink")]
    assert all(c.gbps and c.wrong_bytes == 0 for c in ic.record.copies)
    a = ic.record.allreduce
    assert a is not None and a.error is None and a.backend == "gloo" and a.busbw_gbps > 0
    # CPU "copies" on a shared 2-core machine vary by 20x between runs, so the comparison
    # of the two directions may flag one (test_link_verdict holds that rule); nothing else may.
    assert ic.verdict.value in ("OK", "LOW_BANDWIDTH")
    assert all(p.verdict.value == "LOW_BANDWIDTH" and "below the node's best nvlink pair"
               in p.evidence for p in ic.problems), [p.evidence for p in ic.problems]
    assert any(e["event"] == "phase" and e["phase"] == "interconnect" for e in events)
    text = (tmp_path / "burnin.prom").read_text()
    assert re.search(r'^sentinel_burnin_interconnect_verdict\{hostname="[^"]+",verdict="'
                     + ic.verdict.value + r'"\} 1\.0$', text, re.M), text
    assert 'gpu="0",hostname=' in text and 'peer_gpu="1",topology="nvlink"' in text
    assert "sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second{gpu_count=\"2\"" in text
    assert BurninReport.from_dict(json.loads(json_line(rep.to_dict()))) == rep
    assert not _alive("burnin-")


def test_one_gpu_says_the_interconnect_check_needs_two():
    backend, uuid = _replay()
    rep = run_burnin(BurninConfig(**SMALL), nvml=Nvml(backend), torch=FakeTorch(uuid))
    ic = rep.interconnect
    assert ic is not None and ic.verdict.value == "SKIPPED"
    assert ic.notes == ["interconnect not tested: it needs two or more GPUs (this burn-in has "
                        "1: GPU 0)"]
    assert "interconnect: not tested: it needs two or more GPUs" in format_table(rep)
    assert 'verdict="SKIPPED"' in render_textfile(rep)


def test_overlapped_memory_test_on_a_nearly_full_gpu_tests_only_what_is_free():
    backend, uuid = _replay()
    free = 24 << 20
    rep = run_burnin(BurninConfig(**{**SMALL, "memtest_seconds": 0.1, "warmup": 0.5}),
                     nvml=Nvml(backend), torch=FakeTorch(uuid, free_bytes=free))
    m = rep.records[0].memtest
    assert m is not None and m.note == "" and m.mismatches == 0 and m.concurrent
    assert 0 < m.bytes_tested <= 0.85 * free
    tiny = run_burnin(BurninConfig(**{**SMALL, "memtest_seconds": 0.1}), nvml=Nvml(backend),
                      torch=FakeTorch(uuid, free_bytes=4 << 20))
    m = tiny.records[0].memtest
    assert m.bytes_tested == 0 and m.note == f"only {4 << 20} bytes free: too little to test"
    assert tiny.records[0].error is None


def test_fixed_mode_runs_the_memory_test_first_as_v1_did():
    backend, uuid = _replay()
    rep = run_burnin(BurninConfig(**{**SMALL, "memtest_seconds": 0.1, "warmup": 0.3,
                                     "warmup_mode": "fixed"}),
                     nvml=Nvml(backend), torch=FakeTorch(uuid, free_bytes=24 << 20))
    rec = rep.records[0]
    assert rec.memtest is not None and not rec.memtest.concurrent
    assert rec.warmup_end == "fixed" and rec.warmup_s >= 0.3


def test_a_broken_interconnect_check_keeps_the_gpu_results(monkeypatch):
    backend, uuids = _two_gpu_replay()
    import sentinel.burnin.api as api_mod

    def broken(*a, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(api_mod, "measure_copies", broken)
    rep = run_burnin(BurninConfig(**SMALL), nvml=Nvml(backend), torch=FakeTorch(uuids),
                     allreduce_backend="gloo")
    assert all(r.perf and r.error is None for r in rep.records)
    assert rep.interconnect.verdict.value == "LOW_BANDWIDTH" and rep.exit_code == 1
    assert rep.interconnect.problems[0].evidence == (
        "the interconnect check broke off: RuntimeError: CUDA error: an illegal memory access "
        "was encountered")
    assert not _alive("burnin-")
