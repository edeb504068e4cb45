"""Every list of clock-event reasons agrees with sentinel.gpu.reasons.

The alert rules and the default detector rules are hand-written YAML (checked, not
generated); the dashboards are generated from code. Each is parsed here, its
``reason`` matchers on ``sentinel_gpu_clock_event_active`` are extracted and compared
as sets with the module, so a list that leaves out or adds a reason fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sentinel.dashboards.generate import build_all
from sentinel.gpu import reasons

ROOT = Path(__file__).resolve().parents[3]
ALERT_RULES = ROOT / "alerts" / "sentinel.rules.yml"
DEFAULT_RULES = ROOT / "sentinel" / "rules" / "default_rules.yml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
METRIC = "sentinel_gpu_clock_event_active"
BAD = set(reasons.BAD_REASONS)

_SELECTOR = re.compile(METRIC + r"\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def reason_matchers(expr: str) -> list[tuple[str, set[str]]]:
    """Return (operator, reason names) of every `reason` matcher on the metric in ``expr``."""
    out = []
    for selector in _SELECTOR.findall(expr):
        for label, op, value in _MATCHER.findall(selector):
            if label == "reason":
                out.append((op, set(value.split("|")) if "=~" in op or "!~" in op else {value}))
    return out


def _check(where: str, exprs: list[str]) -> int:
    """Assert every regex matcher in ``exprs`` is exactly the bad set; return how many."""
    found = 0
    for expr in exprs:
        for op, names in reason_matchers(expr):
            unknown = names - set(reasons.CLOCK_EVENT_REASONS)
            assert not unknown, f"{where}: unknown reasons {sorted(unknown)} in {expr!r}"
            if op == "=~":
                found += 1
                assert names == BAD, (
                    f"{where}: reason=~ lists {sorted(names)}, sentinel.gpu.reasons.BAD_REASONS "
                    f"is {sorted(BAD)} (missing {sorted(BAD - names)}, extra "
                    f"{sorted(names - BAD)}) in {expr!r}")
    return found


def _rule_exprs(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [r["expr"] for g in data["groups"] for r in g["rules"]]


def _dashboard_exprs(data: dict) -> list[str]:
    exprs = []
    for panel in [p for top in data["panels"] for p in [top, *top.get("panels", [])]]:
        exprs.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
    for anno in data["annotations"]["list"]:
        if "expr" in anno.get("target", {}):
            exprs.append(anno["target"]["expr"])
    return exprs


def test_the_extractor_sees_what_a_drifted_rule_would_say():
    expr = f'avg_over_time({METRIC}{{gpu="0", reason=~"hw_slowdown|sw_power_cap"}}[5m])'
    assert reason_matchers(expr) == [("=~", {"hw_slowdown", "sw_power_cap"})]
    with pytest.raises(AssertionError, match=r"missing \['hw_power_brake_slowdown'"):
        _check("test", [expr])


def test_alert_rules_count_the_bad_reasons():
    assert _check(str(ALERT_RULES), _rule_exprs(ALERT_RULES)) >= 1


def test_default_detector_rules_ask_for_the_bad_reasons():
    rules = yaml.safe_load(DEFAULT_RULES.read_text())["rules"]
    exprs = [q for r in rules for q in (r.get("series") or {}).values()]
    (throttle,) = [r for r in rules if r["detector"] == "gpu_throttle"]
    assert _check(str(DEFAULT_RULES), exprs) >= 1
    assert reason_matchers(throttle["series"]["clock_event_reasons"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_committed_dashboards_count_the_bad_reasons(path):
    _check(str(path), _dashboard_exprs(json.loads(path.read_text())))


def test_generated_dashboards_count_the_bad_reasons():
    found = {name: _check(name, _dashboard_exprs(json.loads(text)))
             for name, text in build_all().items()}
    # The node and fleet dashboards have hard-throttled panels; a refactor that drops
    # the matcher would otherwise pass unnoticed.
    assert found["sentinel-node.json"] >= 2 and found["sentinel-fleet.json"] >= 1, found


def test_metrics_doc_lists_every_reason():
    doc = (ROOT / "docs" / "METRICS.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith(f"| `{METRIC}`")]
    listed = re.findall(r"`(\w+)`", row.split("|")[-2])
    assert listed == list(reasons.CLOCK_EVENT_REASONS)


def test_groups_partition_the_reasons_and_bits_are_single():
    groups = [reasons.HW_THROTTLE_REASONS, (reasons.SW_THERMAL_REASON,),
              (reasons.POWER_CAP_REASON,), reasons.BENIGN_REASONS]
    flat = [r for g in groups for r in g]
    assert sorted(flat) == sorted(reasons.CLOCK_EVENT_REASONS), "every reason in one group"
    assert BAD == set(reasons.HW_THROTTLE_REASONS) | {reasons.SW_THERMAL_REASON}
    bits = list(reasons.CLOCK_EVENT_REASONS.values())
    assert all(b and b & (b - 1) == 0 for b in bits) and len(set(bits)) == len(bits)
    assert reasons.mask(reasons.BAD_REASONS) == reasons.BAD_MASK == 0x8 | 0x20 | 0x40 | 0x80
    assert reasons.POWER_CAP_MASK == 0x4
