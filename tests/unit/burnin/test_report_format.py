"""A report read back from JSON (another node's ``--json``) equals the report written."""

from __future__ import annotations

import copy
import json
import math

import pytest

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.config import BurninConfig
from sentinel.burnin.records import CorrectnessResult
from sentinel.burnin.report import BurninReport, json_line, result_events
from sentinel.burnin.typedjson import FormatError
from sentinel.burnin.verdict import Verdict, VerdictConfig, judge
from tests.support.burnin import make_record


def make_report(records, **kw) -> BurninReport:
    verdicts = judge(records, VerdictConfig(baselines=load_baselines()))
    return BurninReport(hostname="node07", started_at=1.7e9, finished_at=1.7e9 + 41,
                        wall_seconds=41.25, config=BurninConfig(gpus=[0, 1], duration=30.0),
                        records=records, verdicts=verdicts, torch_version="2.13.0",
                        notes=["NVML: fine"], **kw)


@pytest.fixture
def report(node_records) -> BurninReport:
    # The recorded node has OK, THROTTLED, WRONG_RESULTS, MEMORY_ERRORS and NO_WORK GPUs;
    # one more GPU, slow with no throttle reason, is LOW_FLOPS.
    slow = make_record(8, tflops=600.0, reasons=0x4)
    return make_report([*node_records, slow], textfile_error="b.prom not written: disk full")


def through_json(d: dict) -> dict:
    return json.loads(json.dumps(d, allow_nan=False))


def test_round_trip_keeps_every_verdict_reason_and_evidence(report):
    assert {v.verdict for v in report.verdicts} == set(Verdict)
    back = BurninReport.from_dict(through_json(report.to_dict()))
    assert back == report
    throttled = back.verdicts[3]
    assert throttled.problems[0].evidence.startswith("hw_slowdown active in 6 of 30 samples")
    assert throttled.problems[0].data["bitmasks"] == [0x4, 0xC]
    assert throttled.stats.reason_seconds == report.verdicts[3].stats.reason_seconds
    assert back.verdicts[8].verdict is Verdict.LOW_FLOPS and back.ok is False


def test_the_json_verdict_line_carries_the_report(report):
    """What `sentinel burnin --json` prints last is enough to rebuild the report."""
    last = json.loads(json_line(result_events(report)[-1]))
    assert last["event"] == "verdict"
    assert BurninReport.from_dict(last["report"]) == report


def test_non_finite_numbers_come_back_as_floats(node_records):
    rec = node_records[5]
    rec.correctness = CorrectnessResult(checks=4, mismatches=9, max_abs_error=math.nan,
                                        tolerance="t", reference="r")
    report = make_report([node_records[0], rec])
    text = json_line(report.to_dict())
    assert '"NaN"' in text
    back = BurninReport.from_dict(json.loads(text))
    assert math.isnan(back.records[1].correctness.max_abs_error)
    assert math.isnan(back.verdicts[1].problems[0].data["max_abs_error"])
    assert json_line(back.to_dict()) == text


def _set(path, value):
    def edit(d):
        *keys, last = path
        for k in keys:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set(["hostname"], KeyError), r"^report\.hostname: missing$"),
    (_set(["gpus", 3, "verdict"], "SLOW"),
     r"^report\.gpus\[3\]\.verdict: 'SLOW' is not a valid Verdict \(valid: OK, LOW_FLOPS, "),
    (_set(["gpus", 3, "problems", 0, "verdict"], "BAD"),
     r"^report\.gpus\[3\]\.problems\[0\]\.verdict: 'BAD' is not a valid Verdict"),
    (_set(["gpus", 0, "record", "perf", 2, "flops"], "fast"),
     r"^report\.gpus\[0\]\.record\.perf\[2\]\.flops: 'fast' is not a number \(str\)$"),
    (_set(["gpus", 1, "tflops"], KeyError), r"^report\.gpus\[1\]\.tflops: missing$"),
    (_set(["gpus", 2, "record"], KeyError), r"^report\.gpus\[2\]\.record: missing$"),
    (_set(["gpus", 0, "samples"], 2.5), r"^report\.gpus\[0\]\.samples: 2\.5 is not an integer"),
    (_set(["gpus", 0, "record", "nvml", 0, "temperature_c"], None), None),  # null is allowed
    (_set(["started_at"], "yesterday"), r"^report\.started_at: 'yesterday' is not a number"),
    (_set(["gpus", 0, "color"], "red"), r"^report\.gpus\[0\]\.color: unknown key \(valid keys"),
    (_set(["gpus", 0, "record", "extra"], 1), r"^report\.gpus\[0\]\.record\.extra: unknown key"),
    (_set(["gpus"], {}), r"^report\.gpus: expected a list, got dict$"),
    (_set(["config", "duration"], 0.5), r"^report\.config: burnin\.duration: 0\.5 is below"),
    (_set(["config", "dtype"], 16), r"^report\.config\.dtype: 16 is not a string"),
    (_set(["ok"], True), r"^report\.ok: True, but the GPUs' verdicts give False$"),
    (_set(["gpus", 4, "record", "cuda_index"], 0),
     r"^report\.gpus\[4\]\.record\.cuda_index: 0 is not the verdict's GPU 4$"),
])
def test_bad_input_names_the_key(report, edit, message):
    d = through_json(report.to_dict())
    edit(d)
    if message is None:
        BurninReport.from_dict(d)
        return
    with pytest.raises(FormatError, match=message):
        BurninReport.from_dict(d)


def test_not_an_object_at_all():
    with pytest.raises(FormatError, match=r"^report: expected an object, got list$"):
        BurninReport.from_dict([])  # type: ignore[arg-type]


def test_a_report_without_textfile_error_reads_as_none(report):
    d = through_json(report.to_dict())
    del d["textfile_error"]
    assert BurninReport.from_dict(copy.deepcopy(d)).textfile_error is None


def test_the_report_format_does_not_import_the_api():
    """api.py uses report.py; the reverse would be the import circle that was broken."""
    from tests.support.imports import PACKAGE, imports

    assert not {m for m in imports(PACKAGE / "burnin" / "report.py")
                if m.startswith("sentinel.burnin.api")}
