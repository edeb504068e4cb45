"""The spare pool reads burn-ins the agents exported, through a real Prometheus.

A burn-in result recorded on an H200 (sentinel/burnin/replays), renamed to the spare's
host, written by burn-in's own textfile writer, exported by a real ``sentinel agent``
(textfile collector) and scraped by a real Prometheus: the spare counts as burned in
when every GPU passed recently enough, and not otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from sentinel.burnin.report import write_textfile
from sentinel.controller.actions.burnin import read_report
from sentinel.controller.config import ControllerConfig
from sentinel.controller.journal import Journal
from sentinel.controller.slurm import Slurm
from sentinel.controller.spares import SparePool
from tests.support.agent import run_agent
from tests.support.burnin_replay import recorded
from tests.support.services import run_prometheus
from tests.support.slurm import Done, Replay, text

pytestmark = pytest.mark.integration


def export(textdir: Path, verdict: str, host: str, finished_at: float) -> None:
    report = read_report(recorded(verdict))
    write_textfile(textdir / "burnin.prom",
                   dataclasses.replace(report, hostname=host, finished_at=finished_at))


def pool(tmp: Path, prom_url: str, max_age_h: float) -> SparePool:
    cfg = ControllerConfig(journal=str(tmp / "c.db"), prometheus_url=prom_url,
                           burnin_max_age_hours=max_age_h)
    # Captured sinfo: node5 idle, feature `staged`; no reservation.
    slurm = Slurm(runner=Replay({
        "sinfo --json": Done(0, text("sinfo-running.json"), ""),
        "scontrol -o show reservation": Done(0, text("reservations-none.txt"), "")}))
    return SparePool(slurm, Journal(cfg.journal), cfg, time.time)


def test_spare_ready_from_an_exported_burnin(tmp_path):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    finished = time.time() - 120
    export(textdir, "pass", "node5", finished)
    with run_agent(tmp_path / "agent", ["--textfile-dir", str(textdir)]) as agent, \
            run_prometheus(tmp_path / "prom", [agent.hostport]) as prom:
        prom.wait_for('sentinel_burnin_ok{hostname="node5"}')
        prom.wait_for('sentinel_burnin_timestamp_seconds{hostname="node5"}')
        [s] = pool(tmp_path, prom.url, 24).status()
        assert (s.node, s.ready, s.why) == ("node5", True, "ready")
        assert s.burned_in_at == pytest.approx(finished, abs=1)
        # Older than controller.burnin_max_age_hours: not ready.
        [old] = pool(tmp_path / "b", prom.url, 60 / 3600).status()
        assert not old.ready and old.why == "no burn-in passed in the last 0.0166667 h"
        # The same host's burn-in now fails: not ready.
        export(textdir, "fail", "node5", time.time())
        deadline = time.monotonic() + 20
        while prom.query('sentinel_burnin_ok{hostname="node5"} == 1'):
            assert time.monotonic() < deadline, "Prometheus still sees the passing burn-in"
            time.sleep(0.5)
        [bad] = pool(tmp_path / "c", prom.url, 24).status()
        assert not bad.ready


def test_prometheus_down_leaves_the_journal_as_the_source(tmp_path, caplog):
    [s] = pool(tmp_path, "http://127.0.0.1:9", 24).status()  # nothing listens on port 9
    assert not s.ready and s.why.startswith("no burn-in passed")
    assert "spare pool: cannot read burn-ins from Prometheus: Prometheus http://127.0.0.1:9" \
        in caplog.text
