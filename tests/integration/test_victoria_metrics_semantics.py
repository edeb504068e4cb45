"""Where VictoriaMetrics 1.79.5 answers differently from Prometheus 2.42, pinned.

Each difference is one that docs/DESIGN.md ("Past one Prometheus") and docs/SCALE.md
state and sentinel depends on or works around; if an upgrade changes one, its test
fails and the docs must change with it. Prometheus' side is checked with promtool where
the difference is in PromQL evaluation.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.services import need_binary
from tests.support.victoria import VictoriaMetrics, run_victoria_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with run_victoria_metrics(tmp_path_factory.mktemp("vm")) as store:
        yield store


def _import(vm: VictoriaMetrics, series: str, points: list[tuple[float, str]]) -> None:
    vm.import_prometheus("".join(f"{series} {v} {round(t * 1000)}\n" for t, v in points))
    vm.flush()


def _promtool_value(tmp: Path, values: str, expr: str, eval_time: str, expected: str) -> None:
    """Require promtool to evaluate ``expr`` over series ``x`` to ``expected``."""
    promtool = need_binary("promtool", "prometheus")
    (tmp / "r.yml").write_text("groups: []\n")
    (tmp / "t.yml").write_text(
        "rule_files: [r.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
        f"    input_series:\n      - series: 'x'\n        values: '{values}'\n"
        f"    promql_expr_test:\n      - expr: {expr}\n        eval_time: {eval_time}\n"
        f"        exp_samples:\n          - labels: '{{}}'\n            value: {expected}\n")
    r = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nan_samples_are_dropped_at_ingestion(vm: VictoriaMetrics) -> None:
    """Why SentinelLossNotFinite also reads sentinel_train_loss_finite."""
    now = time.time() // 60 * 60
    _import(vm, 'nan_loss{rank="0"}',
            [(now - 300 + 60 * i, v) for i, v in enumerate(["2.5", "NaN", "+Inf", "2.5"])])
    body = requests.get(f"{vm.url}/api/v1/export", params={"match[]": "nan_loss"},
                        timeout=10).text
    # (The export writes +Inf bare, which is not JSON: read the text.)
    assert '"values":[2.5,+Inf,2.5]' in body, body
    stamps = re.search(r'"timestamps":\[([0-9,]+)\]', body)
    assert stamps and len(stamps.group(1).split(",")) == 3, body


def test_increase_counts_the_first_value_of_a_new_series(vm: VictoriaMetrics,
                                                          tmp_path: Path) -> None:
    """A GPU's first XID (the counter appears at 1) is an increase here, not on Prometheus."""
    now = time.time() // 60 * 60
    for first in (1, 9, 10):
        _import(vm, f'new_total{{first="{first}"}}', [(now - 300 + 60 * i, str(first))
                                                     for i in range(6)])
    got = {r["metric"]["first"]: float(r["value"][1])
           for r in vm.query("increase(new_total[10m])", at=now)}
    assert got == {"1": 1.0, "9": 9.0, "10": 0.0}
    _promtool_value(tmp_path, "_x10 1x5", "increase(x[10m])", "15m", "0")


def test_range_windows_exclude_their_left_edge(vm: VictoriaMetrics, tmp_path: Path) -> None:
    """Eleven one-minute samples lie in [t-10m, t] on Prometheus 2.42, ten here."""
    now = time.time() // 60 * 60
    _import(vm, "edge", [(now - 1200 + 60 * i, "1") for i in range(21)])
    assert vm.query("count_over_time(edge[10m])", at=now)[0]["value"][1] == "10"
    _promtool_value(tmp_path, "1x20", "count_over_time(x[10m])", "15m", "11")


def test_a_series_younger_than_a_step_is_not_in_range_queries(vm: VictoriaMetrics) -> None:
    """Why a new problem reaches the rules engine up to one query step later here."""
    now = time.time()
    for age in (20, 40):
        _import(vm, f'young{{age="{age}"}}', [(now - age + i, "1") for i in range(age)])
    for step, visible in ((5, {"20", "40"}), (30, {"40"})):
        body = requests.get(f"{vm.url}/api/v1/query_range", timeout=10, params={
            "query": "young", "start": now - 600, "end": now, "step": step}).json()
        assert {r["metric"]["age"] for r in body["data"]["result"]} == visible, (step, body)
