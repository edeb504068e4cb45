"""The host collector's /proc readers: psutil's figures, without psutil in the agent."""

from __future__ import annotations

import shutil

import psutil
import pytest

from sentinel.agent.collectors.host import read_cpu_times, read_memory
from tests.support.collectors import PROC


def _psutil_figures(procfs: str) -> tuple[float, float]:
    """What the host collector computed from psutil before (the golden scrape's figure)."""
    psutil.PROCFS_PATH = procfs
    try:
        t = psutil.cpu_times()
        vm = psutil.virtual_memory()
    finally:
        psutil.PROCFS_PATH = "/proc"
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t) - (getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0))
    return total - idle, total, vm.total, vm.available


def test_cpu_and_memory_equal_psutils_on_the_fixture():
    busy, total, ram, avail = _psutil_figures(str(PROC))
    assert read_cpu_times(str(PROC)) == (busy, total)  # exactly: same sums, same order
    assert read_memory(str(PROC)) == (ram, avail)


def test_cpu_and_memory_total_equal_psutils_on_this_machine():
    busy, total, ram, _ = _psutil_figures("/proc")
    mine = read_cpu_times("/proc")
    assert mine[1] == pytest.approx(total, rel=1e-3)  # both read a live counter
    assert read_memory("/proc")[0] == ram


def test_without_memavailable_free_buffers_and_cache_count(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\n"
                                      "Cached: 300 kB\nSwapCached: 7 kB\n")
    assert read_memory(str(tmp_path)) == (1024000.0, 420 * 1024.0)
    (tmp_path / "meminfo").write_text("MemTotal: 10 kB\nMemAvailable: 99 kB\n")
    assert read_memory(str(tmp_path)) == (10240.0, 10240.0)


@pytest.mark.parametrize(("stat", "message"), [
    ("intr 1 2 3\n", "the first line is not 'cpu user nice system idle ...'"),
    ("cpu 1 2\n", "the first line is not"),
    ("cpu 1 2 x 4 5\n", "a non-numeric field in the cpu line"),
])
def test_a_bad_stat_file_is_named(tmp_path, stat, message):
    (tmp_path / "stat").write_text(stat)
    with pytest.raises(ValueError, match=f"{tmp_path}/stat: {message}"):
        read_cpu_times(str(tmp_path))


def test_a_meminfo_without_memtotal_is_named(tmp_path):
    shutil.copy(PROC / "stat", tmp_path / "stat")
    (tmp_path / "meminfo").write_text("MemFree: 1 kB\n")
    with pytest.raises(ValueError, match=f"{tmp_path}/meminfo: no MemTotal line"):
        read_memory(str(tmp_path))


def test_read_file_reads_it_all_and_is_bounded(tmp_path, monkeypatch):
    from sentinel.agent.collectors import base

    data = bytes(range(256)) * 1000  # several os.read calls
    (tmp_path / "f").write_bytes(data)
    assert base.read_file(str(tmp_path / "f")) == data
    assert base.read_file("/proc/loadavg").count(b" ") == 4
    monkeypatch.setattr(base, "MAX_PROC_FILE_BYTES", 100_000)
    with pytest.raises(ValueError, match=f"{tmp_path}/f: larger than 100000 bytes"):
        base.read_file(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        base.read_file(str(tmp_path / "missing"))
