import json

import pytest

from sentinel.train.skipplan import SkipPlan, SkipPlanError, parse_range


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "expected START:END"),
        ("a:5", "must be integers"),
        ("-3:5", "negative batch index"),
        ("9:4", "END must be greater than START"),
        ("7:7", "END must be greater than START"),
        ("1:2:3", "expected START:END"),
    ],
)
def test_bad_ranges_are_rejected_with_a_reason(text, message):
    with pytest.raises(SkipPlanError, match=message):
        parse_range(text)


def test_overlap_rejected_and_plan_unchanged(tmp_path):
    plan = SkipPlan(tmp_path)
    plan.add([(100, 200)], added_by="ctl", reason="spike at 150")
    msg = r"150:160 overlaps 100:200 \(added by ctl: spike at 150\)"
    with pytest.raises(SkipPlanError, match=msg):
        plan.add([(300, 310), (150, 160)], added_by="me", reason="x")
    # all-or-nothing: 300:310 was not added either, in memory or on disk
    assert [r.text() for r in plan.ranges] == ["100:200"]
    assert [r.text() for r in SkipPlan(tmp_path).ranges] == ["100:200"]
    with pytest.raises(SkipPlanError, match="overlaps"):
        plan.add([(10, 20), (15, 30)], added_by="me", reason="x")
    with pytest.raises(SkipPlanError, match="negative"):
        plan.add([(-1, 5)], added_by="me", reason="x")


def test_persisted_with_history_and_reloaded(tmp_path):
    plan = SkipPlan(tmp_path)
    plan.add([(50, 60)], added_by="alice", reason="bad shard", now=1000.0)
    plan.add([(10, 20), (60, 61)], added_by="controller", reason="incident 7", now=2000.0)
    data = json.loads((tmp_path / "skip_plan.json").read_text())
    assert data["version"] == 1
    rows = [(r["start"], r["end"], r["added_by"], r["reason"], r["time"]) for r in data["ranges"]]
    assert rows == [
        (10, 20, "controller", "incident 7", 2000.0),
        (50, 60, "alice", "bad shard", 1000.0),
        (60, 61, "controller", "incident 7", 2000.0),
    ]
    again = SkipPlan(tmp_path)
    assert again.ranges == plan.ranges
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_lookup_and_next_unskipped():
    plan = SkipPlan(None)
    plan.add([(5, 8), (8, 10), (20, 21)], added_by="t", reason="t")
    skipped = [i for i in range(25) if plan.is_skipped(i)]
    assert skipped == [5, 6, 7, 8, 9, 20]
    assert plan.next_unskipped(4) == 4
    assert plan.next_unskipped(5) == 10  # adjacent ranges are crossed in one go
    assert plan.next_unskipped(20) == 21


def test_damaged_plan_file_is_a_clear_error(tmp_path):
    (tmp_path / "skip_plan.json").write_text('{"version": 1, "ranges": [{"start": 5}]}')
    with pytest.raises(SkipPlanError, match="range #0: 'end' is None"):
        SkipPlan(tmp_path)
    (tmp_path / "skip_plan.json").write_text(
        '{"version": 1, "ranges": [{"start": 5, "end": 9}, {"start": 7, "end": 12}]}')
    with pytest.raises(SkipPlanError, match="overlaps"):
        SkipPlan(tmp_path)
