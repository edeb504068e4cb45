"""The local Slurm cluster in tests, and captured Slurm output for unit tests.

The cluster itself (munged, slurmctld, N slurmd on 127.0.0.1) starts from the package,
:mod:`sentinel.localstack.slurm`, which ``sentinel demo`` uses too; here a missing tool
or a non-root user is a skip naming ``apt-get install slurm-wlm munge`` (a failure in CI).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.localstack import slurm as _slurm
from sentinel.localstack.slurm import INSTALL, SlurmCluster
from tests.support.services import need_tool

__all__ = ["INSTALL", "SlurmCluster", "client", "need_slurm", "run_slurm"]


def need_slurm() -> dict[str, str]:
    """Return the paths of slurmctld, slurmd and munged, or skip (fail in CI)."""
    with need_tool():
        return _slurm.need_slurm()
    raise AssertionError("unreachable")  # need_tool skips or fails


@contextlib.contextmanager
def run_slurm(tmp: Path, n_nodes: int = 5, **kw: Any) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and ``n_nodes`` slurmd (node1..N); stop them all at the end."""
    need_slurm()
    with _slurm.run_slurm(tmp, n_nodes, **kw) as c:
        yield c


def client(cluster: SlurmCluster, **kw: Any) -> Any:
    """Return the controller's Slurm client pointed at ``cluster``."""
    from sentinel.controller.slurm import Slurm

    return Slurm(conf=str(cluster.conf), **kw)


# -- captured output, for unit tests of sentinel/controller/slurm.py and the actions ----

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def text(name: str) -> str:
    """Return a captured output file of tests/fixtures/slurm."""
    return (FIX / name).read_text()


def error(name: str) -> dict[str, Any]:
    """Return a captured failure: argv, returncode, stdout, stderr."""
    return json.loads(text(name))


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


class Replay:
    """A runner answering from captured output; records every argv, timeout and env."""

    def __init__(self, answers: dict[str, Done | BaseException]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], float, dict[str, str]]] = []

    def __call__(self, argv: list[str], timeout: float, env: dict[str, str]) -> Done:
        self.calls.append((argv, timeout, env))
        key = " ".join(argv)
        for prefix, ans in self.answers.items():
            if key.startswith(prefix) or key.split("/")[-1].startswith(prefix):
                if isinstance(ans, BaseException):
                    raise ans
                return ans
        return Done(0, "", "")


def from_error(name: str) -> Done:
    """Return a captured failure as a runner's answer."""
    e = error(name)
    return Done(e["returncode"], e["stdout"], e["stderr"])
