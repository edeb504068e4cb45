"""Storage that really gets slow: each node's copy of the dataset on a loop device whose reads
are throttled on demand.

Layout (root only): one file-backed loop device A holds an ext4 filesystem; in it, one
image file per node backs that node's loop device B_n (``--direct-io=on``), with an ext4
filesystem holding the node's copy of the dataset ("staged" data, as on real nodes). The
job reads its batches with O_DIRECT from B_n, so every step's reads reach B_n and, through
it, A.

Slowing: a blkio (cgroup v1) group with ``blkio.throttle.read_iops_device`` on A, into
which the job's processes are moved. Throttling delays a bio *before* the device's
accounting, so throttling B_n itself would hide the wait from B_n's own statistics; here
B_n's reads wait for A's throttled reads, so B_n's read time in /proc/diskstats (the
agent's ``sentinel_disk_read_latency_seconds``) rises for real, as a node's does when
its network storage slows down. :func:`unavailable` says why this cannot run here (not
root, no loop devices, no blkio throttling) so the demo can say it and skip the episode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLKIO = Path("/sys/fs/cgroup/blkio")
TOOLS = ("losetup", "mkfs.ext4", "mount", "umount")
# Seconds any one of losetup/mkfs/mount may take (they take milliseconds on a loop file).
TOOL_TIMEOUT_S = 60.0
# Each node's filesystem: the dataset plus ext4's own metadata and some room.
FS_SLACK_BYTES = 8 << 20


def unavailable(blkio: Path = BLKIO) -> str | None:
    """Return why slowed storage cannot be set up here, or None when it can."""
    if os.geteuid() != 0:
        return "loop devices, mounts and blkio throttling need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found (Debian: mount, e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: this machine (container) cannot make loop devices"
    if not (blkio / "blkio.throttle.read_iops_device").exists():
        return (f"no cgroup v1 blkio throttling at {blkio} (cgroup v2's io.max is not "
                "supported by the demo yet)")
    if not os.access(blkio, os.W_OK):
        return f"{blkio} is read-only here (a container without cgroup write access)"
    return None


def _run(*argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                       check=False)
    if r.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({r.returncode}): "
                      f"{(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def _majmin(device: str) -> str:
    st = os.stat(device)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


@dataclass
class SlowStorage:
    """The loop devices and mounts of one demo run, and the throttle on them."""

    root: Path
    nodes: list[str]
    backing: str = ""                                          # /dev/loopA
    devices: dict[str, str] = field(default_factory=dict)      # node -> /dev/loopB
    mounts: list[Path] = field(default_factory=list)           # in mount order
    group: Path | None = None                                  # the blkio group, when made
    moved: dict[int, Path] = field(default_factory=dict)       # pid -> its previous group

    def device_names(self) -> dict[str, str]:
        """Return each node's data device as /proc/diskstats names it (``loop7``)."""
        return {n: Path(d).name for n, d in self.devices.items()}

    def data_dir(self, node: str) -> Path:
        """Return where ``node``'s copy of the dataset is mounted."""
        return self.root / "nodes" / node

    def setup(self, data_bytes: int, write: Callable[[Path], Any]) -> None:
        """Make A, one B per node with a filesystem, and ``write(dir)`` the data into each."""
        self.root.mkdir(parents=True, exist_ok=True)
        per_node = data_bytes + FS_SLACK_BYTES
        a_img = self.root / "backing.img"
        with open(a_img, "wb") as fh:
            fh.truncate(len(self.nodes) * (per_node + (1 << 20)) + FS_SLACK_BYTES)
        self.backing = _run("losetup", "--find", "--show", str(a_img))
        _run("mkfs.ext4", "-q", "-F", self.backing)
        a_dir = self.root / "backing"
        a_dir.mkdir(exist_ok=True)
        _run("mount", self.backing, str(a_dir))
        self.mounts.append(a_dir)
        for node in self.nodes:
            img = a_dir / f"{node}.img"
            with open(img, "wb") as fh:
                fh.truncate(per_node)
            dev = _run("losetup", "--find", "--show", "--direct-io=on", str(img))
            self.devices[node] = dev
            _run("mkfs.ext4", "-q", "-F", dev)
            d = self.data_dir(node)
            d.mkdir(parents=True, exist_ok=True)
            _run("mount", dev, str(d))
            self.mounts.append(d)
            write(d)
        os.sync()

    def slow(self, pids: list[int], read_iops: int) -> list[int]:
        """Throttle reads of A to ``read_iops`` for ``pids``; return the PIDs moved."""
        if self.group is None:
            self.group = BLKIO / f"sentinel-demo-{os.getpid()}"
            self.group.mkdir(exist_ok=True)
        (self.group / "blkio.throttle.read_iops_device").write_text(
            f"{_majmin(self.backing)} {read_iops}\n")
        moved = []
        for pid in pids:
            before = _blkio_group(pid)
            try:
                (self.group / "cgroup.procs").write_text(f"{pid}\n")
            except OSError as e:  # gone meanwhile
                log.info("storage: cannot move PID %d into %s: %s", pid, self.group, e)
                continue
            self.moved.setdefault(pid, before or BLKIO)
            moved.append(pid)
        return moved

    def restore(self) -> None:
        """Lift the throttle and put every moved process back in its group."""
        if self.group is None:
            return
        with contextlib.suppress(OSError):
            (self.group / "blkio.throttle.read_iops_device").write_text(
                f"{_majmin(self.backing)} 0\n")
        for pid, group in list(self.moved.items()):
            with contextlib.suppress(OSError):
                (group / "cgroup.procs").write_text(f"{pid}\n")
        self.moved.clear()

    def teardown(self) -> None:
        """Restore, remove the group, unmount and detach everything (best effort, logged)."""
        self.restore()
        if self.group is not None:
            try:
                self.group.rmdir()
            except OSError as e:
                log.warning("storage: cannot remove %s: %s", self.group, e)
            self.group = None
        # B's filesystems, then B's loop devices (their files live on A), then A.
        backing_mount = self.mounts[0] if self.mounts else None
        for m in reversed(self.mounts[1:]):
            _quietly("umount", str(m))
        for dev in self.devices.values():
            _quietly("losetup", "--detach", dev)
        if backing_mount is not None:
            _quietly("umount", str(backing_mount))
        if self.backing:
            _quietly("losetup", "--detach", self.backing)
        self.mounts.clear()
        self.devices.clear()
        self.backing = ""


def _quietly(*argv: str) -> None:
    """Run a clean-up command; a failure is logged (clean-up goes on)."""
    try:
        _run(*argv)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("storage clean-up: %s", e)


def _blkio_group(pid: int) -> Path | None:
    """Return the blkio group ``pid`` is in (cgroup v1), or None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if "blkio" in ctrls.split(","):
                return BLKIO / path.lstrip("/")
    except (OSError, ValueError):
        return None
    return None
