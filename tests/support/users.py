"""Run test processes as other users: ``setpriv`` argv, and an interpreter they may run.

Users and groups come from :mod:`tests.support.probe` (``ensure_user``,
``ensure_group``, ``open_dir``: idempotent, left in place). Needs root.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
import sys
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
