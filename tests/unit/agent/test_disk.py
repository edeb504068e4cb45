"""The disk collector on captured /proc/diskstats pairs, and against node_exporter."""

from __future__ import annotations

import re
import shutil

import pytest

from sentinel.agent.collectors.disk import (
    DiskCollector,
    DiskStats,
    parse_diskstats,
    read_latency_seconds,
)
from sentinel.agent.config import DEFAULT_DISK_EXCLUDE
from sentinel.exposition import render
from tests.support.collectors import H100, make_ctx, proc_dir, render_collector
from tests.support.metrics import value


def test_default_exclusion_skips_ram_loop_and_partitions():
    text = (H100 / "diskstats-1.txt").read_text()
    text += " 259 1 nvme0n1p1 1 0 8 1 0 0 0 0 0 1 1 0 0 0 0\n"
    text += " 8 1 sda1 1 0 8 1 0 0 0 0 0 1 1 0 0 0 0\n"
    devs = parse_diskstats(text, re.compile(DEFAULT_DISK_EXCLUDE))
    assert set(devs) == {"vda", "vdb"}


def test_remembered_exclusions_give_the_same_devices_and_stay_bounded(monkeypatch):
    import sentinel.agent.collectors.disk as disk

    text = (H100 / "diskstats-1.txt").read_text()
    text += "".join(f" 7 {i} loop{i} 1 0 8 1 0 0 0 0 0 1 1 0 0 0 0\n" for i in range(40))
    exclude = re.compile(DEFAULT_DISK_EXCLUDE)
    monkeypatch.setattr(disk, "MAX_EXCLUDE_CACHE", 16)
    seen: dict[str, bool] = {}
    for _ in range(3):
        assert parse_diskstats(text, exclude, seen) == parse_diskstats(text, exclude)
        assert set(parse_diskstats(text, exclude, seen)) == {"vda", "vdb"}
        assert len(seen) <= len(text.splitlines())
    seen.update({f"x{i}": True for i in range(20)})  # past the bound: emptied, then refilled
    assert set(parse_diskstats(text, exclude, seen)) == {"vda", "vdb"}
    assert "x0" not in seen and seen["loop3"] is True and seen["vda"] is False


def test_counters_have_node_exporter_units(tmp_path):
    ctx = make_ctx(tmp_path, procfs=str(proc_dir(tmp_path, 1)))
    text = render_collector(DiskCollector(ctx))
    # vda: 4935 reads, 3193890 sectors, 4680 ms reading, 203 writes, 4432 sectors,
    # 51 ms writing, 2388 ms io (the captured line).
    assert value(text, "sentinel_disk_reads_completed_total", device="vda") == 4935
    assert value(text, "sentinel_disk_read_bytes_total", device="vda") == 3193890 * 512
    assert value(text, "sentinel_disk_read_time_seconds_total", device="vda") == \
        pytest.approx(4.680)
    assert value(text, "sentinel_disk_writes_completed_total", device="vda") == 203
    assert value(text, "sentinel_disk_written_bytes_total", device="vda") == 4432 * 512
    assert value(text, "sentinel_disk_write_time_seconds_total", device="vda") == \
        pytest.approx(0.051)
    assert value(text, "sentinel_disk_io_time_seconds_total", device="vda") == \
        pytest.approx(2.388)
    # No previous reading: no latency yet rather than a made-up one.
    assert "sentinel_disk_read_latency_seconds{" not in text


def test_read_latency_over_the_captured_pair(tmp_path):
    d = proc_dir(tmp_path, 1)
    c = DiskCollector(make_ctx(tmp_path, procfs=str(d)))
    render_collector(c)
    shutil.copy(H100 / "diskstats-2.txt", d / "diskstats")
    text = render_collector(c)
    # vda read 41 more times (4935 -> 4976) and spent 212 ms more reading (4680 -> 4892).
    assert value(text, "sentinel_disk_read_latency_seconds", device="vda") == \
        pytest.approx(0.212 / 41)
    # vdb did not read in between: 0, not NaN.
    assert value(text, "sentinel_disk_read_latency_seconds", device="vdb") == 0.0


def test_counter_going_backwards_gives_zero_latency():
    a = DiskStats(100, 0, 500, 0, 0, 0, 0)
    b = DiskStats(10, 0, 50, 0, 0, 0, 0)
    assert read_latency_seconds(a, b) == 0.0


def test_malformed_diskstats_names_the_line():
    with pytest.raises(ValueError, match="line 1: 3 fields"):
        parse_diskstats("8 0 sda\n")
    with pytest.raises(ValueError, match="line 1: non-numeric"):
        parse_diskstats("8 0 sda 1 2 x 4 5 6 7 8 9 10 11\n")


def test_bad_file_fails_the_collector_not_the_scrape(tmp_path):
    from sentinel.agent.exporter import Agent

    d = tmp_path / "proc"
    d.mkdir()
    (d / "diskstats").write_text("garbage\n")
    ctx = make_ctx(tmp_path, procfs=str(d), collectors=["disk", "training"])
    agent = Agent(ctx)
    text = agent.render().decode()
    assert value(text, "sentinel_collector_success", collector="disk") == 0
    assert value(text, "sentinel_collector_success", collector="training") == 1


def test_kept_families_hold_only_the_latest_collect(tmp_path):
    """The collector reuses its families: new values replace old, a gone device drops out."""
    procfs = proc_dir(tmp_path, 1)
    c = DiskCollector(make_ctx(tmp_path, procfs=str(procfs)))
    first = c.collect()
    before = render(first).decode()
    text = (H100 / "diskstats-2.txt").read_text()
    (procfs / "diskstats").write_text(
        "".join(ln + "\n" for ln in text.splitlines() if " vdb " not in ln))
    second = c.collect()
    after = render(second).decode()
    c.close()
    assert all(a is b for a, b in zip(first, second, strict=True))  # kept, not rebuilt
    lines = [ln.rsplit(" ", 1)[0] for ln in after.splitlines() if not ln.startswith("#")]
    assert len(lines) == len(set(lines))
    assert 'device="vdb"' in before and 'device="vdb"' not in after
    vda = [ln for ln in text.splitlines() if " vda " in ln][0].split()
    assert value(before, "sentinel_disk_reads_completed_total", device="vda") != int(vda[3])
    assert value(after, "sentinel_disk_reads_completed_total", device="vda") == int(vda[3])


def test_an_excluded_device_is_skipped_before_its_fields_are_read():
    """Only a kept device's fields are split and checked; a bad kept line is named."""
    exclude = re.compile(DEFAULT_DISK_EXCLUDE)
    good = " 253 0 vda 1 0 8 1 0 0 0 0 0 1 1 0 0 0 0\n"
    assert set(parse_diskstats(" 7 0 loop0 1 2\n" + good, exclude)) == {"vda"}
    with pytest.raises(ValueError, match=r"line 1: 5 fields, expected at least 14"):
        parse_diskstats(" 253 0 vda 1 2\n", exclude)
    with pytest.raises(ValueError, match=r"line 2: 3 fields, expected at least 14"):
        parse_diskstats(good + " 253 0 vda\n", exclude)
    with pytest.raises(ValueError, match=r"line 1: non-numeric field"):
        parse_diskstats(" 253 0 vda 1 0 8 1 0 x 0 0 0 1 1\n", exclude)
