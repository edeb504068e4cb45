"""Run test processes as other users: system users and groups, ``setpriv`` argv.

Users and groups are created with ``useradd``/``groupadd`` (idempotent, prefixed
``sntl-``, left in place so parallel runs never race on deleting them). Needs root.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.services import IN_CI, need_binary

ROOT = Path(__file__).resolve().parents[2]


def need_root(why: str) -> None:
    """Skip (fail in CI) unless root."""
    if os.geteuid() == 0:
        return
    msg = f"run as root: {why}"
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


def ensure_user(name: str, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
    """Return system user ``name``, created (in ``groups`` besides its own) if missing."""
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
    return pw


def as_user(user: str, argv: list[str], *, read_all: bool = False) -> list[str]:
    """Return ``argv`` run as ``user`` with its groups, as a login would give them.

    ``read_all`` adds CAP_DAC_READ_SEARCH (read any file): for a process that must load
    an interpreter and packages under a directory only root may enter (this machine's
    Python lives in /root), never for the process whose access is being tested.
    """
    pw = pwd.getpwnam(user)
    gids = sorted(set(os.getgrouplist(user, pw.pw_gid)))
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if read_all \
        else []
    return [need_binary("setpriv", "util-linux"), f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}", "--groups=" + ",".join(map(str, gids)), *caps, *argv]


@functools.cache
def plain_python(user: str) -> str:
    """Return an interpreter ``user`` can run, without privileges, that imports sentinel."""
    for exe in (sys.executable, "/usr/bin/python3"):
        r = subprocess.run(as_user(user, ["env", f"PYTHONPATH={ROOT}", exe, "-c",
                                          "import sentinel.train.request"]),
                           capture_output=True, timeout=60, check=False)
        if r.returncode == 0:
            return exe
    pytest.fail(f"no Python that user {user} may run imports sentinel.train.request")


def open_dir() -> Path:
    """Return a fresh directory every user can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="sentinel-users-"))
    d.chmod(0o755)
    return d
