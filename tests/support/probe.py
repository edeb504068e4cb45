"""Helpers of the hostile probe (tests/adversarial): other users, raw datagrams, RSS.

The probe runs as root (as CI does): it creates system users and groups with
``useradd``/``groupadd`` (idempotent, prefixed ``sntl-adv-``, left in place so parallel
runs never race on deleting them) and sends datagrams as them through
``setpriv --reuid``, so the agent sees real kernel credentials.
"""

from __future__ import annotations

import grp
import os
import pwd
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sentinel import protocol
from tests.support.services import IN_CI, need_binary

# Sends the datagrams read from stdin (u32 length + bytes each) to argv[1]; prints the
# errno name of each failed send (EACCES when the socket's mode keeps the user out).
_SENDER = r"""
import errno, socket, struct, sys
path = sys.argv[1]
data = sys.stdin.buffer.read()
out = []
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
off = 0
while off < len(data):
    (n,) = struct.unpack_from("<I", data, off)
    off += 4
    try:
        s.sendto(data[off:off + n], path)
        out.append("ok")
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
    off += n
print(" ".join(out))
"""


def need_root() -> None:
    """Skip (fail in CI) unless root: the probe creates users and sends as them."""
    if os.geteuid() == 0:
        return
    msg = "run as root: the probe creates users (useradd) and sends as them (setpriv)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def ensure_group(name: str) -> int:
    """Return the gid of group ``name``, creating it (a system group) if missing."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    # rc 9: created meanwhile by a parallel run; either way the group exists now.
    subprocess.run([need_binary("groupadd", "passwd"), "--system", name],
                   capture_output=True, timeout=30, check=False)
    return grp.getgrnam(name).gr_gid


def ensure_user(name: str, groups: tuple[str, ...] = ()) -> tuple[int, int]:
    """Return (uid, gid) of system user ``name``, creating it in ``groups`` if missing."""
    for g in groups:
        ensure_group(g)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        args = [need_binary("useradd", "passwd"), "--system", "--no-create-home",
                "--shell", "/usr/sbin/nologin", "--user-group"]
        if groups:
            args += ["--groups", ",".join(groups)]
        subprocess.run([*args, name], capture_output=True, timeout=30, check=False)
        pw = pwd.getpwnam(name)
    for g in groups:
        if name not in grp.getgrnam(g).gr_mem:
            subprocess.run([need_binary("usermod", "passwd"), "--append", "--groups", g, name],
                           capture_output=True, timeout=30, check=True)
    return pw.pw_uid, pw.pw_gid


def send_as(user: str, path: str, datagrams: list[bytes]) -> list[str]:
    """Send ``datagrams`` to the Unix socket ``path`` as ``user``; return each send's result.

    The process gets the user's uid, primary gid and supplementary groups (as a login
    would), so the kernel's SCM_CREDENTIALS and the socket's permissions are real.
    """
    pw = pwd.getpwnam(user)
    gids = sorted(set(os.getgrouplist(user, pw.pw_gid)))
    payload = b"".join(struct.pack("<I", len(d)) + d for d in datagrams)
    r = subprocess.run(
        [need_binary("setpriv", "util-linux"), f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
         "--groups=" + ",".join(map(str, gids)), sys.executable, "-I", "-S", "-c", _SENDER,
         path],
        input=payload, capture_output=True, timeout=60, check=True,
    )
    return r.stdout.decode().split()


def open_dir() -> Path:
    """Return a fresh directory every user can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="sentinel-probe-"))
    d.chmod(0o755)
    return d


def step_datagram(job: str, rank: int = 0, step: int = 1, loss: float = 1.0, *,
                  pid: int = 4242, gpu: str | None = "GPU-a", host: str = "node1",
                  tokens: int = 100, t: float = 1.0, extra: dict[str, float] | None = None,
                  extra_json: bytes | None = None) -> bytes:
    """Return one step datagram; ``extra_json`` puts raw bytes where the extras go."""
    ident = protocol.Identity(job=job, rank=rank, pid=pid, gpu_uuid=gpu, host=host)
    prefix = protocol.header(protocol.TYPE_STEP, raw_identity(ident))
    data = protocol.encode_step(prefix, step, loss, tokens, None, None, t, extra)
    return data + (extra_json or b"")


def raw_identity(ident: protocol.Identity) -> bytes:
    """Encode an identity without the encoder's checks (a hostile sender has none)."""
    import json

    return json.dumps({"job": ident.job, "rank": ident.rank, "pid": ident.pid,
                       "gpu_uuid": ident.gpu_uuid, "host": ident.host},
                      separators=(",", ":")).encode()


def event_datagram(job: str, rank: int, kind: str, *, pid: int = 4242) -> bytes:
    """Return one event datagram."""
    ident = protocol.Identity(job=job, rank=rank, pid=pid, gpu_uuid="GPU-a", host="node1")
    return protocol.encode_event(protocol.header(protocol.TYPE_EVENT, raw_identity(ident)),
                                 kind, 1.0, {})


def status_kib(pid: int, field: str) -> int:
    """Return a ``/proc/PID/status`` figure in KiB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")
