"""The Prometheus rules, their promtool tests, the Alertmanager config and the runbooks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.alert_rules import compress_expr, compressed_rules, duration_seconds
from tests.support.services import need_binary

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULES = ALERTS / "sentinel.rules.yml"
TESTS = sorted((ALERTS / "tests").glob("*.yml"))
REQUIRED_ANNOTATIONS = ("summary", "description", "value", "runbook_url")


def _rules() -> list[dict]:
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def _alerts() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def test_promtool_check_rules() -> None:
    promtool = need_binary("promtool", "prometheus")
    r = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules() -> None:
    promtool = need_binary("promtool", "prometheus")
    assert TESTS, "no promtool tests in alerts/tests/"
    r = subprocess.run(
        [promtool, "test", "rules", *map(str, TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ALERTS / "tests",
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), f"alerts with no firing test case: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts with no quiet test case: {sorted(names - quiet)}"
    assert (firing | quiet) - names == set(), "tests name alerts that do not exist"


def test_every_alert_is_documented_and_has_a_runbook() -> None:
    for a in _alerts():
        name = a["alert"]
        assert a.get("labels", {}).get("severity") in ("critical", "warning"), name
        missing = [k for k in REQUIRED_ANNOTATIONS if not a.get("annotations", {}).get(k)]
        assert not missing, f"{name} lacks annotations {missing}"
        assert "look" in a["annotations"]["description"].lower(), (
            f"{name}: the description must say what to look at first"
        )
        url = a["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.startswith("docs/runbooks/") and anchor == name.lower(), url
        runbook = (ROOT / path).read_text()
        assert f"## {name}\n" in runbook, f"{path} has no section '## {name}'"


def test_rules_use_only_metrics_from_the_contract() -> None:
    contract = (ROOT / "docs" / "METRICS.md").read_text()
    recorded = {r["record"] for r in _rules() if "record" in r}
    for rule in _rules():
        expr = rule["expr"]
        for name in set(re.findall(r"[a-z0-9_:]*sentinel_[a-z0-9_:]+", expr)):
            if name in recorded:
                continue
            assert f"`{name}`" in contract, (
                f"{rule.get('alert') or rule.get('record')}: metric {name} "
                "is not in docs/METRICS.md"
            )
    # Recording rules follow the level:metric:operations naming convention.
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:sentinel_[a-z_]+:[a-z0-9_]+", name), name


def test_amtool_check_config() -> None:
    amtool = need_binary("amtool", "prometheus-alertmanager")
    r = subprocess.run(
        [amtool, "check-config", str(ALERTS / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 templates" in r.stdout, "the Slack template was not loaded: " + r.stdout


def test_alertmanager_route_and_receiver() -> None:
    cfg = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    route = cfg["route"]
    assert route["group_by"] == ["alertname", "job", "hostname"]
    slack = cfg["receivers"][0]["slack_configs"][0]
    assert slack["send_resolved"] is True
    assert "api_url" not in slack, "the webhook URL is a secret: use api_url_file"
    assert slack["api_url_file"]
    assert duration_seconds(route["group_wait"]) <= 60
    assert duration_seconds(route["repeat_interval"]) >= 3600


def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a config naming an unknown receiver is refused."""
    amtool = need_binary("amtool", "prometheus-alertmanager")
    cfg = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    cfg["route"]["receiver"] = "nobody"
    cfg["templates"] = [str(ALERTS / "templates" / "*.tmpl")]
    bad = tmp_path / "am.yml"
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [amtool, "check-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert "nobody" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(x[1m])", "rate(x[2s])"),
        ("quantile_over_time(0.5, x[1h])", "quantile_over_time(0.5, x[120s])"),
        ("x unless x offset 10m", "x unless x offset 20s"),
        ("max_over_time(x[15m:30s])", "max_over_time(x[30s:1s])"),
        ("x > 600", "x > 600"),
    ],
)
def test_compress_expr(expr: str, expected: str) -> None:
    assert compress_expr(expr, factor=30, minimum_s=1) == expected


def test_compressed_rules_are_valid(tmp_path: Path) -> None:
    promtool = need_binary("promtool", "prometheus")
    out = tmp_path / "fast.rules.yml"
    data = compressed_rules(factor=30)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    fors = {r["alert"]: r.get("for") for g in data["groups"] for r in g["rules"] if "alert" in r}
    assert fors["SentinelThroughputDrop"] == "10s"
    r = subprocess.run(
        [promtool, "check", "rules", str(out)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
