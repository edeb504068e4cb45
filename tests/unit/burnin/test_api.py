"""``run_burnin`` end to end on the CPU: real torch tensors, a stand-in ``torch.cuda``.

The stand-in maps the CUDA device to the CPU and times "CUDA events" with the host
clock, so the runner, the result check, the sampler (replayed H100 NVML) and the verdict
run their real code. Only what needs a GPU is replaced.
"""

import threading
import time
import types

import pytest

from sentinel.burnin.api import run_burnin
from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.burnin.verdict import Verdict
from sentinel.cli import main
from sentinel.gpu.nvml import Nvml
from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend

torch = pytest.importorskip("torch")

LOAD = H100_LOAD
SMALL = {"size": 128, "duration": 1.0, "warmup": 0.0, "memtest_seconds": 0.0,
         "hang_timeout": 1.0, "sample_interval": 0.1, "check_every": 4}


class _Event:
    def __init__(self, enable_timing: bool = False, hung: bool = False) -> None:
        self.t: float | None = None
        self.hung = hung

    def record(self, stream=None) -> None:
        self.t = time.monotonic()

    def query(self) -> bool:
        return not self.hung

    def elapsed_time(self, end: "_Event") -> float:
        return (end.t - self.t) * 1000.0


class FakeTorch:
    """Real torch for tensors; ``torch.cuda`` answers as for one GPU mapped to the CPU."""

    def __init__(self, uuid: str, hung: bool = False) -> None:
        self.hung = hung
        self.cuda = types.SimpleNamespace(
            device_count=lambda: 1,
            get_device_properties=lambda i: types.SimpleNamespace(
                name="NVIDIA H100 80GB HBM3", uuid=uuid),
            set_device=lambda d: None,
            Stream=lambda device=None: types.SimpleNamespace(synchronize=lambda: None),
            stream=lambda s: _Null(),
            Event=lambda enable_timing=False: _Event(enable_timing, hung=self.hung),
            mem_get_info=lambda d: (1 << 20, 1 << 21),
            empty_cache=lambda: None,
        )
        self.backends = types.SimpleNamespace(
            cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=True)))

    def device(self, *_a):
        return torch.device("cpu")

    def __getattr__(self, name):
        return getattr(torch, name)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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

    cfg = BurninConfig(**{**SMALL, "duration": 60.0})
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
