"""``python -m sentinel.burnin.replay``: a recorded burn-in, replayed where there is no GPU."""

from __future__ import annotations

import time

import pytest

from sentinel.burnin.replay import main, recorded
from sentinel.controller.actions.burnin import read_report
from tests.support.metrics import value


@pytest.mark.parametrize(("name", "code", "verdict"), [("pass", 0, "OK"), ("fail", 1, "LOW_FLOPS")])
def test_replay_prints_what_sentinel_burnin_json_printed(capsys, name, code, verdict):
    assert main([name]) == code
    out, err = capsys.readouterr()
    assert "REPLAY of h200-" in err and "not a burn-in of this node" in err
    assert out == recorded(name)
    report = read_report(out)  # what the controller's burn-in step reads
    assert [v.verdict.value for v in report.verdicts] == [verdict]


def test_the_textfile_says_this_node_and_now(tmp_path, capsys):
    t0 = time.time()
    assert main(["pass", "--textfile", str(tmp_path / "burnin.prom"), "--hostname",
                 "node5"]) == 0
    text = (tmp_path / "burnin.prom").read_text()
    assert value(text, "sentinel_burnin_ok", hostname="node5") == 1
    assert value(text, "sentinel_burnin_timestamp_seconds", hostname="node5") >= t0


def test_a_name_that_is_no_recording_is_refused(tmp_path, capsys):
    assert main(["maybe"]) == 2
    assert "valid: pass, fail" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.report.json")]) == 2
