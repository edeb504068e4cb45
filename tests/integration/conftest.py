"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.example_job import finish, read_log
from tests.support.rollback_e2e import start_job


@pytest.fixture(scope="session")
def gpt_control(tmp_path_factory) -> Iterator[Callable[[], list[dict]]]:
    """The rollback tests' job without its bad batches: started at once, read when needed.

    Same seed and flags, so until the first bad batch both runs are the same run.
    """
    run_dir = tmp_path_factory.mktemp("gpt-control")
    # No agent: the Reporter drops its datagrams, as it does whenever none listens.
    proc = start_job(run_dir, str(run_dir / "no-agent.sock"), bad=False)
    log: list[dict] = []

    def get() -> list[dict]:
        if not log:
            finish(proc)
            log.extend(read_log(run_dir))
        return log

    yield get
    proc.kill()
