"""A tiny tmpfs for tests of a full disk: mounted for the test, unmounted after.

Mounting needs root (CAP_SYS_ADMIN). In CI (``CI=true``) a failed mount is a failure;
elsewhere the test is skipped saying what is needed.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import IN_CI


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``2m``) on ``path``; unmount it at the end."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs",
                        str(path)], capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        msg = (f"cannot mount a tmpfs on {path} ({r.stderr.strip()}): the full-disk tests "
               "need root with CAP_SYS_ADMIN")
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                       check=False)
