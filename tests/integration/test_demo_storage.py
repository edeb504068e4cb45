"""The demo's slowed-storage rig for real: loop devices, a blkio throttle, the reads' latency.

Where the machine cannot make loop devices or throttle blkio (not root, a container), the
test is skipped with the reason ``sentinel demo`` prints; where it can, it must work (in
CI too).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinel.demo.storage import BLKIO, SlowStorage, unavailable

pytestmark = pytest.mark.integration

READER = r"""
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf, size, i = mmap.mmap(-1, 4096), os.fstat(fd).st_size, 0
while True:
    os.preadv(fd, [buf], (i * 7919 * 4096) % (size - 4096))
    i += 1
    time.sleep(0.002)
"""


def _reads(device: str) -> tuple[int, int]:
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == device:
            return int(f[3]), int(f[6])
    raise AssertionError(f"{device} not in /proc/diskstats")


def _latency_ms(device: str, seconds: float = 2.0) -> float:
    r0, ms0 = _reads(device)
    time.sleep(seconds)
    r1, ms1 = _reads(device)
    assert r1 > r0, f"no reads on {device}"
    return (ms1 - ms0) / (r1 - r0)


def test_throttled_backing_device_makes_the_data_devices_reads_slow(tmp_path):
    why = unavailable()
    if why is not None:
        pytest.skip(f"slowed storage cannot run here: {why}")
    rig = SlowStorage(tmp_path / "storage", ["node1"])
    reader = None
    try:
        rig.setup(1 << 20, lambda d: (d / "data").write_bytes(b"x" * (1 << 20)))
        dev = rig.device_names()["node1"]
        reader = subprocess.Popen([sys.executable, "-c", READER,
                                   str(rig.data_dir("node1") / "data")])
        time.sleep(1.0)
        normal = _latency_ms(dev)
        assert rig.slow([reader.pid], 20) == [reader.pid]
        assert f"{reader.pid}" in (rig.group / "cgroup.procs").read_text()  # type: ignore[operator]
        slowed = _latency_ms(dev)
        rig.restore()
        after = _latency_ms(dev)
        assert slowed > 20.0 and slowed > 20 * normal, (normal, slowed)
        assert after < slowed / 5, (slowed, after)
        assert f"{reader.pid}" not in (rig.group / "cgroup.procs").read_text()  # type: ignore[operator]
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
        devices = [*rig.devices.values(), rig.backing]
        group = rig.group
        rig.teardown()
    # Nothing left behind: no mount, no loop device, no cgroup.
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert not any(f"{d}:" in attached for d in devices if d), attached
    assert group is not None and not group.exists() and group.parent == BLKIO
