"""sentinel's disk counters equal node_exporter's for the same /proc/diskstats file."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from sentinel.agent.collectors.disk import DiskCollector
from sentinel.agent.config import DEFAULT_DISK_EXCLUDE
from tests.support.collectors import make_ctx, proc_dir, render_collector
from tests.support.metrics import samples
from tests.support.services import free_port, need_binary, stop


@pytest.mark.integration
@pytest.mark.parametrize("which", [1, 2])
def test_values_equal_node_exporter_for_the_same_file(tmp_path, which):
    exe = need_binary("prometheus-node-exporter", "prometheus-node-exporter")
    d = proc_dir(tmp_path, which)
    port = free_port()
    log = open(tmp_path / "ne.log", "wb")
    proc = subprocess.Popen(
        [exe, f"--web.listen-address=127.0.0.1:{port}", f"--path.procfs={d}",
         f"--path.sysfs={tmp_path}", f"--path.udev.data={tmp_path}",
         "--collector.disable-defaults", "--collector.diskstats",
         # node_exporter 1.5's default lacks zram (newer releases add it); compare like
         # with like by giving it sentinel's default.
         f"--collector.diskstats.device-exclude={DEFAULT_DISK_EXCLUDE}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                ne = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        stop(proc)
        log.close()
    ours = samples(render_collector(DiskCollector(make_ctx(tmp_path, procfs=str(d)))))
    theirs = samples(ne)
    pairs = {
        "sentinel_disk_reads_completed_total": "node_disk_reads_completed_total",
        "sentinel_disk_writes_completed_total": "node_disk_writes_completed_total",
        "sentinel_disk_read_bytes_total": "node_disk_read_bytes_total",
        "sentinel_disk_written_bytes_total": "node_disk_written_bytes_total",
        "sentinel_disk_read_time_seconds_total": "node_disk_read_time_seconds_total",
        "sentinel_disk_write_time_seconds_total": "node_disk_write_time_seconds_total",
        "sentinel_disk_io_time_seconds_total": "node_disk_io_time_seconds_total",
    }
    compared = 0
    for mine, ne_name in pairs.items():
        ne_vals = {dict(ls)["device"]: v for (n, ls), v in theirs.items() if n == ne_name}
        my_vals = {dict(ls)["device"]: v for (n, ls), v in ours.items() if n == mine}
        assert set(my_vals) == set(ne_vals), (mine, my_vals, ne_vals)
        for dev, v in my_vals.items():
            assert v == pytest.approx(ne_vals[dev], rel=1e-12), (mine, dev)
            compared += 1
    assert compared >= 14
