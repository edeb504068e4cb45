"""The alert rules' promtool test cases, evaluated by vmalert on VictoriaMetrics.

Debian's vmalert (1.79.5) has no unit-test mode, so tests/support/vmalert_replay.py
imports each case's series into VictoriaMetrics and replays the shipped rules with
``vmalert -replay.*`` (the shipped flags otherwise), then compares the firing ALERTS
and the recorded expressions at every ``eval_time`` with promtool's expectations.
Annotations are not compared (replay writes only the ALERTS series).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import vmalert_replay
from tests.support.victoria import run_victoria_metrics

pytestmark = pytest.mark.integration

TESTS = sorted((Path(__file__).resolve().parents[2] / "alerts" / "tests").glob("*.yml"))


def test_promtool_cases_pass_under_vmalert(tmp_path: Path) -> None:
    with run_victoria_metrics(tmp_path / "vm") as vm:
        checks, diffs = vmalert_replay.run(TESTS, vm, tmp_path)
    # Every case of every file ran: alert cases and expression cases.
    assert len(checks) >= 40 and {c.kind for c in checks} == {"alert", "expr"}
    assert any(c.expected for c in checks if c.kind == "alert")
    assert diffs == [], "\n".join(diffs)
