"""A report read back from JSON (another node's ``--json``) equals the report written."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.config import BurninConfig
from sentinel.burnin.link_verdict import InterconnectVerdict, LinkVerdict, judge_interconnect
from sentinel.burnin.records import (
    AllreduceMeasurement,
    CopyMeasurement,
    CorrectnessResult,
    InterconnectRecord,
)
from sentinel.burnin.report import BurninReport, json_line, result_events
from sentinel.burnin.typedjson import FormatError
from sentinel.burnin.verdict import Verdict, VerdictConfig, judge
from tests.support.burnin import H100, make_record

FIXTURES = Path(__file__).with_name("fixtures")


def make_report(records, **kw) -> BurninReport:
    verdicts = judge(records, VerdictConfig(baselines=load_baselines()))
    return BurninReport(hostname="node07", started_at=1.7e9, finished_at=1.7e9 + 41,
                        wall_seconds=41.25, config=BurninConfig(gpus=[0, 1], duration=30.0),
                        records=records, verdicts=verdicts, torch_version="2.13.0",
                        notes=["NVML: fine"], **kw)


def links(gpus, slow_pair=(8, 9)) -> InterconnectVerdict:
    """The interconnect verdict of a node whose ``slow_pair`` copies at a third of the speed."""
    copies = []
    for a in gpus:
        for b in gpus:
            if a != b:
                gbps = 130.0 if (a, b) == slow_pair else 390.0
                copies.append(CopyMeasurement(src=a, dst=b, topology="nvlink",
                                              bytes_per_copy=1 << 28, copies=100,
                                              seconds=(1 << 28) * 100 / (gbps * 1e9), p2p=True))
    ar = AllreduceMeasurement(gpus=list(gpus), topology="nvlink", message_bytes=1 << 28,
                              iters=20, seconds_per_iter=0.0012, rank_seconds=[0.0011, 0.0012],
                              version="2.27.3", env={"NCCL_NVLS_ENABLE": "0"})
    rec = InterconnectRecord(gpus=list(gpus), copies=copies, allreduce=ar, seconds=2.5)
    return judge_interconnect(rec, {g: H100 for g in gpus}, "nvlink", {}, 0.15)


@pytest.fixture
def report(node_records) -> BurninReport:
    # The recorded node has OK, THROTTLED, WRONG_RESULTS, MEMORY_ERRORS and NO_WORK GPUs;
    # one more GPU, slow with no throttle reason, is LOW_FLOPS; a tenth, whose link
    # from GPU 8 is slow, is LOW_BANDWIDTH.
    slow = make_record(8, tflops=600.0, reasons=0x4)
    ic = links([8, 9])
    recs = [*node_records, slow, make_record(9)]
    verdicts = judge(recs, VerdictConfig(baselines=load_baselines()), ic.gpu_problems())
    return BurninReport(hostname="node07", started_at=1.7e9, finished_at=1.7e9 + 41,
                        wall_seconds=41.25, config=BurninConfig(gpus=[0, 1], duration=30.0),
                        records=recs, verdicts=verdicts, torch_version="2.13.0",
                        notes=["NVML: fine"], textfile_error="b.prom not written: disk full",
                        interconnect=ic)


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
    assert [p.verdict for p in back.verdicts[8].problems] == [Verdict.LOW_FLOPS,
                                                              Verdict.LOW_BANDWIDTH]
    assert back.verdicts[9].verdict is Verdict.LOW_BANDWIDTH
    assert back.interconnect is not None and back.interconnect.verdict is LinkVerdict.LOW_BANDWIDTH
    assert back.interconnect.record.allreduce.busbw_gbps == pytest.approx((1 << 28) / 0.0012 / 1e9)
    assert back.interconnect.problems[0].evidence.startswith(
        "copy GPU 8 -> GPU 9 over nvlink: 130.0 GB/s, 66.7% below the node's best nvlink pair")


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
    (_set(["interconnect", "verdict"], "SLOW"),
     r"^report\.interconnect\.verdict: 'SLOW' is not a valid LinkVerdict \(valid: OK, "),
    (_set(["interconnect", "record", "copies", 1, "seconds"], "fast"),
     r"^report\.interconnect\.record\.copies\[1\]\.seconds: 'fast' is not a number"),
    (_set(["interconnect", "record", "allreduce", "gpus"], KeyError),
     r"^report\.interconnect\.record\.allreduce\.gpus: missing$"),
    (_set(["interconnect", "problems", 0, "gpus"], "8,9"),
     r"^report\.interconnect\.problems\[0\]\.gpus: expected a list, got str$"),
    (_set(["interconnect", "colour"], 1), r"^report\.interconnect\.colour: unknown key"),
    (_set(["config", "warmup_mode"], "lukewarm"),
     r"^report\.config: burnin\.warmup_mode: 'lukewarm' is not valid \(valid: steady, fixed\)"),
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


@pytest.mark.parametrize("name, verdict", [("h200_v1_pass", "OK"), ("h200_v1_fail", "LOW_FLOPS")])
def test_a_report_written_before_v2_still_loads(name, verdict):
    """Reports `sentinel burnin --json` wrote on the device H200 before v2 (no interconnect,
    no warm-up fields) read back, with the settings that run really had."""
    d = json.loads((FIXTURES / f"{name}.report.json").read_text())
    assert "interconnect" not in d and "warmup_mode" not in d["config"]
    back = BurninReport.from_dict(d)
    assert back.interconnect is None
    assert back.config.warmup_mode == "fixed" and back.config.interconnect is False
    assert back.config.duration == 20 and back.config.tolerance == 0.07
    (v,), (rec,) = back.verdicts, back.records
    assert v.verdict.value == verdict and v.name == "NVIDIA H200"
    assert rec.warmup_end == "" and rec.setup_s is None and rec.memtest.free_bytes is None
    assert rec.memtest.passes == 3 and not rec.memtest.concurrent
    assert back.exit_code == (0 if verdict == "OK" else 1)
    # Written again by today's code, it reads back the same.
    assert BurninReport.from_dict(through_json(back.to_dict())) == back
