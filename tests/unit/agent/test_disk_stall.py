"""The one-second disk sampler: a short stall among healthy reads is not averaged away."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.agent.collectors.disk import read_latency_seconds
from sentinel.agent.collectors.disk_stall import DiskStallCollector, sample_cost_s
from tests.support.collectors import diskstats_line, make_ctx, render_collector
from tests.support.metrics import value


def test_a_3_s_stall_shows_at_full_height_where_the_15_s_mean_stays_low(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    ctx = make_ctx(tmp_path, procfs=str(proc))
    clock = {"t": 0.0}
    ctx.monotonic = lambda: clock["t"]
    c = DiskStallCollector(ctx)
    reads = read_ms = io_ms = 0
    first = last = None
    for sec in range(16):
        stall = 6 <= sec < 9
        if sec:  # healthy: 100 reads at 0.5 ms; stalled: 5 reads at 300 ms, 40 in flight
            reads += 5 if stall else 100
            read_ms += 1500 if stall else 50
            io_ms += 1000 if stall else 60
        text = diskstats_line("nvme0n1", reads, read_ms, 40 if stall else 1, io_ms)
        text += diskstats_line("nvme1n1", 7, 3, 0, 3)  # idle all along: no reads, no latency
        (proc / "diskstats").write_text(text)
        clock["t"] = float(sec)
        c.sample()
        from sentinel.agent.collectors.disk import parse_diskstats
        if sec == 1:
            first = parse_diskstats(text)["nvme0n1"]
        last = parse_diskstats(text)["nvme0n1"]
    assert first is not None and last is not None
    # What the scrape-average gauge says over the same 15 s: the stall diluted to ~4 ms.
    assert read_latency_seconds(first, last) < 0.010
    out = render_collector(c)
    assert value(out, "sentinel_disk_read_latency_max_seconds", device="nvme0n1") == \
        pytest.approx(0.300)
    assert value(out, "sentinel_disk_read_latency_recent_seconds", device="nvme0n1") == \
        pytest.approx(0.0005)
    assert value(out, "sentinel_disk_in_flight_ios_max", device="nvme0n1") == 40
    assert value(out, "sentinel_disk_busy_ratio_max", device="nvme0n1") == pytest.approx(1.0)
    assert "sentinel_disk_read_latency_max_seconds{device=\"nvme1n1\"}" not in out
    assert value(out, "sentinel_disk_busy_ratio_max", device="nvme1n1") == 0.0
    # 15 s later the stall has left the window.
    clock["t"] = 40.0
    assert "sentinel_disk_read_latency_max_seconds{" not in render_collector(c)


def test_the_sampler_thread_samples_and_stops(tmp_path):
    ctx = make_ctx(tmp_path, procfs="/proc")
    c = DiskStallCollector(ctx)
    c.start()
    try:
        import time
        deadline = time.monotonic() + 5
        while c._prev is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c._prev is not None and c.errors == 0
    finally:
        c.close()
    assert c._thread is not None and not c._thread.is_alive()


@pytest.mark.skipif(not Path("/proc/diskstats").exists(), reason="needs /proc/diskstats")
def test_one_sample_costs_under_half_a_percent_of_a_core(tmp_path):
    """At one sample a second, 0.5% of a core is 5 ms of CPU per sample."""
    c = DiskStallCollector(make_ctx(tmp_path, procfs="/proc"))
    cost = sample_cost_s(c, n=200)
    assert cost < 0.005, f"{cost * 1e3:.3f} ms per sample"
