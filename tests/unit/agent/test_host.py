"""The host collector's /proc readers: psutil's figures, without psutil in the agent."""

from __future__ import annotations

import shutil

import psutil
import pytest

from sentinel.agent.collectors.host import HostCollector, read_cpu_times, read_memory
from sentinel.exposition import render
from tests.support.collectors import PROC, make_ctx
from tests.support.metrics import value


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


def _open_fds() -> set[str]:
    import os

    return set(os.listdir("/proc/self/fd"))


def test_a_procfs_file_stays_open_and_reads_fresh_content():
    import time

    from sentinel.agent.collectors.base import ProcFile

    before = _open_fds()
    f = ProcFile("/proc/uptime")
    first = f.read()
    kept = _open_fds() - before
    assert len(kept) == 1  # one descriptor, kept for the next read
    time.sleep(0.05)
    second = f.read()
    assert _open_fds() - before == kept
    assert float(second.split()[0]) > float(first.split()[0])  # read anew, not cached
    f.close()
    assert _open_fds() == before


def test_a_procfs_file_longer_than_one_read_comes_whole_every_time():
    from sentinel.agent.collectors.base import ProcFile

    f = ProcFile("/proc/self/smaps")  # ~20 lines per mapping: several 64 KiB reads
    try:
        reads = [f.read() for _ in range(3)]
    finally:
        f.close()
    with open("/proc/self/smaps", "rb") as fh:
        whole = fh.read()
    assert len(reads[0]) > 65536
    assert {r.count(b"\nRss:") for r in reads} == {whole.count(b"\nRss:")}
    assert all(r.endswith(b"\n") for r in reads)


def test_a_regular_file_is_opened_for_each_read(tmp_path):
    """A fixture tree's file, replaced by a rename, is read from the new file."""
    import os

    from sentinel.agent.collectors.base import ProcFile

    (tmp_path / "loadavg").write_text("1 2 3 1/1 1\n")
    before = _open_fds()
    f = ProcFile(str(tmp_path / "loadavg"))
    assert f.read() == b"1 2 3 1/1 1\n"
    assert _open_fds() == before
    (tmp_path / "new").write_text("4 5 6 1/1 1\n")
    os.replace(tmp_path / "new", tmp_path / "loadavg")
    assert f.read() == b"4 5 6 1/1 1\n"


def test_an_error_closes_the_kept_file_and_the_next_read_opens_it_again(monkeypatch):
    from sentinel.agent.collectors import base

    before = _open_fds()
    f = base.ProcFile("/proc/self/smaps")
    monkeypatch.setattr(base, "MAX_PROC_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="/proc/self/smaps: larger than 1000 bytes"):
        f.read()
    assert _open_fds() == before
    monkeypatch.undo()
    assert b"Rss:" in f.read()
    assert len(_open_fds() - before) == 1
    f.close()
    with pytest.raises(FileNotFoundError):
        base.ProcFile("/proc/no-such-file").read()
    assert _open_fds() == before


def test_the_host_and_disk_collectors_close_their_files(tmp_path):
    from sentinel.agent.collectors.disk import DiskCollector
    from sentinel.agent.collectors.host import HostCollector
    from tests.support.collectors import make_ctx

    ctx = make_ctx(tmp_path, procfs="/proc")
    before = _open_fds()
    cs = [HostCollector(ctx), DiskCollector(ctx)]
    for _ in range(3):
        for c in cs:
            assert c.collect() and c.success
    assert len(_open_fds() - before) == 4  # stat, meminfo, loadavg, diskstats
    for c in cs:
        c.close()
    assert _open_fds() == before


def test_kept_families_hold_only_the_latest_collect(tmp_path):
    """The collector reuses its families: a path gone since the last collect drops out."""
    keep, gone = tmp_path / "keep", tmp_path / "gone"
    keep.mkdir()
    gone.mkdir()
    c = HostCollector(make_ctx(tmp_path, filesystem_paths=[str(keep), str(gone)]))
    first = c.collect()
    assert c.success
    before = render(first).decode()
    gone.rmdir()
    second = c.collect()
    after = render(second).decode()
    c.close()
    assert not c.success
    assert all(a is b for a, b in zip(first, second, strict=True))  # kept, not rebuilt
    lines = [ln.rsplit(" ", 1)[0] for ln in after.splitlines() if not ln.startswith("#")]
    assert len(lines) == len(set(lines))
    assert f'path="{gone}"' in before and f'path="{gone}"' not in after
    assert value(after, "sentinel_host_filesystem_size_bytes", path=str(keep)) > 0
    # The fixture's /proc/stat does not move: the second busy ratio is over no time.
    assert value(before, "sentinel_host_cpu_utilization_ratio") > 0
    assert value(after, "sentinel_host_cpu_utilization_ratio") == 0
    assert value(after, "sentinel_host_memory_total_bytes") == value(
        before, "sentinel_host_memory_total_bytes")
