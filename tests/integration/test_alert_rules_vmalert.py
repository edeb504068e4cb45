"""The alert rules' promtool test cases, evaluated by vmalert on VictoriaMetrics.

Debian's vmalert (1.79.5) has no unit-test mode, so tests/support/vmalert_replay.py
imports each case's series into VictoriaMetrics and replays the shipped rules with
``vmalert -replay.*`` (the shipped flags otherwise), then compares the firing ALERTS
and the recorded expressions at every ``eval_time`` with promtool's expectations.
Annotations are not compared (replay writes only the ALERTS series).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests

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


def test_victoria_metrics_drops_nan_samples(tmp_path: Path) -> None:
    """Why SentinelLossNotFinite also reads sentinel_train_loss_finite (docs/SCALE.md)."""
    now = int(time.time()) // 60 * 60
    text = "".join(f'loss{{rank="0"}} {v} {(now - 300 + 60 * i) * 1000}\n'
                   for i, v in enumerate(["2.5", "NaN", "+Inf", "2.5"]))
    with run_victoria_metrics(tmp_path / "vm") as vm:
        vm.import_prometheus(text)
        vm.flush()
        body = requests.get(f"{vm.url}/api/v1/export", params={"match[]": "loss"},
                            timeout=10).text
    # (The export writes +Inf bare, which is not JSON: read the text.)
    assert '"values":[2.5,+Inf,2.5]' in body, body
    stamps = re.search(r'"timestamps":\[([0-9,]+)\]', body)
    assert stamps and len(stamps.group(1).split(",")) == 3, body
