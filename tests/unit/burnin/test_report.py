"""Table, JSON lines and the Prometheus textfile of a recorded node."""

import io
import json

import pytest

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.config import BurninConfig
from sentinel.burnin.link_verdict import judge_interconnect
from sentinel.burnin.records import AllreduceMeasurement, CopyMeasurement, InterconnectRecord
from sentinel.burnin.report import (
    BurninReport,
    ProgressBar,
    format_table,
    json_line,
    read_textfile,
    render_textfile,
    result_events,
    write_textfile,
)
from sentinel.burnin.verdict import VerdictConfig, judge
from tests.support.burnin import make_record
from tests.support.metrics import check_promtool


@pytest.fixture
def report(node_records):
    verdicts = judge(node_records, VerdictConfig(baselines=load_baselines()))
    return BurninReport(hostname="node07", started_at=1.7e9, finished_at=1.7e9 + 41,
                        wall_seconds=41.0, config=BurninConfig(), records=node_records,
                        verdicts=verdicts)


def test_table_shows_every_gpu_and_the_evidence(report):
    text = format_table(report)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["GPU", "NAME", "TFLOPS"]
    row0 = lines[1].split()
    assert row0[0] == "0" and row0[-1] == "OK"
    assert any(line.startswith("7 ") and line.endswith("NO_WORK") for line in lines)
    assert "GPU 3 THROTTLED: hw_slowdown active in 6 of 30 samples" in text
    assert text.splitlines()[-1].startswith("FAILED: 3 of 8 GPUs passed in 41 s")


def test_json_lines(report):
    events = [json.loads(json_line(e)) for e in result_events(report)]
    assert [e["event"] for e in events] == ["result"] * 8 + ["verdict"]
    r3 = events[3]
    assert r3["verdict"] == "THROTTLED" and r3["uuid"].startswith("GPU-")
    assert set(r3["tflops"]) == {"min", "median", "max", "mean"}
    assert r3["problems"][0]["evidence"]
    assert events[7]["tflops"]["mean"] is None and events[7]["error"]
    final = events[-1]
    assert final["ok"] is False and final["exit_code"] == 1
    assert [g["verdict"] for g in final["gpus"]][:3] == ["OK"] * 3


def test_json_line_spells_non_finite_numbers():
    line = json_line({"event": "result", "max_abs_error": float("inf"), "x": float("nan")})
    assert json.loads(line) == {"event": "result", "max_abs_error": "Infinity", "x": "NaN"}


def test_textfile_series(report):
    text = render_textfile(report)
    assert ('sentinel_burnin_verdict{UUID="GPU-00000000-0000-0000-0000-000000000003",gpu="3",'
            'hostname="node07",modelName="NVIDIA H100 80GB HBM3",verdict="THROTTLED"} 1.0') in text
    assert 'sentinel_burnin_ok{' in text
    assert text.count("sentinel_burnin_ok{") == 8
    assert text.count('stat="median"') == 7  # the GPU that did no work has no speed
    assert "sentinel_burnin_throttle_seconds{" in text


@pytest.mark.integration
def test_textfile_reads_back_every_gpus_verdict(report):
    gpus = read_textfile(render_textfile(report), "burnin.prom")
    assert [(g.gpu, g.uuid, g.verdict, g.ok) for g in gpus] == [
        (str(v.nvml_index if v.nvml_index is not None else v.cuda_index), v.uuid,
         v.verdict.value, v.ok) for v in report.verdicts]
    assert {g.hostname for g in gpus} == {"node07"}
    assert {g.finished_at for g in gpus} == {report.finished_at}
    assert any(not g.ok for g in gpus)  # the recorded node has failing GPUs


def test_reading_a_textfile_that_is_not_one_says_so():
    with pytest.raises(ValueError, match="burnin.prom: no sentinel_burnin_ok series"):
        read_textfile("node_load1 0.5\n", "burnin.prom")
    with pytest.raises(ValueError, match="not a Prometheus text exposition"):
        read_textfile('sentinel_burnin_ok{gpu="0"} yes\n', "burnin.prom")


def test_textfile_passes_promtool(report, tmp_path):
    path = tmp_path / "burnin.prom"
    write_textfile(path, report)
    check_promtool(path.read_text())


def test_textfile_is_replaced_atomically(report, tmp_path):
    path = tmp_path / "textfile" / "burnin.prom"
    write_textfile(path, report)
    first = path.read_text()
    path.chmod(0o444)
    write_textfile(path, report)
    assert path.read_text() == first
    assert [p.name for p in path.parent.iterdir()] == ["burnin.prom"]  # no leftovers


def test_progress_bar_draws_on_its_stream():
    buf = io.StringIO()
    bar = ProgressBar(buf, total_s=30)
    bar.update({"event": "start"})
    assert buf.getvalue() == ""
    bar.update({"event": "progress", "elapsed": 20.0, "gpus": [
        {"gpu": 0, "phase": "measure", "tflops": 731.4, "measured_s": 15.0},
        {"gpu": 1, "phase": "measure", "tflops": 729.0, "measured_s": 16.0}]})
    bar.close()
    out = buf.getvalue()
    assert "50%" in out and "0:731 1:729" in out and out.endswith("\n")


@pytest.fixture
def linked_report():
    """Two H200s whose copy from GPU 1 to GPU 0 runs at a third of the other direction."""
    nbytes = 1 << 28
    copies = [CopyMeasurement(src=s, dst=d, topology="nvlink", bytes_per_copy=nbytes,
                              copies=100, seconds=nbytes * 100 / (g * 1e9), p2p=True)
              for s, d, g in ((0, 1, 390.0), (1, 0, 130.0))]
    ar = AllreduceMeasurement(gpus=[0, 1], topology="nvlink", message_bytes=nbytes, iters=20,
                              seconds_per_iter=nbytes / 350e9, rank_seconds=[0.00076] * 2)
    rec = InterconnectRecord(gpus=[0, 1], copies=copies, allreduce=ar)
    ic = judge_interconnect(rec, {0: "NVIDIA H200", 1: "NVIDIA H200"}, "nvlink", {}, 0.15)
    recs = [make_record(i, tflops=660.0, name="NVIDIA H200") for i in (0, 1)]
    recs[1].nvml_index = 3  # NVML numbers this GPU 3: the series say so
    verdicts = judge(recs, VerdictConfig(baselines=load_baselines()), ic.gpu_problems())
    return BurninReport(hostname="node07", started_at=1.7e9, finished_at=1.7e9 + 29,
                        wall_seconds=28.6, config=BurninConfig(), records=recs,
                        verdicts=verdicts, interconnect=ic)


def test_textfile_interconnect_series(linked_report):
    text = render_textfile(linked_report)
    assert ('sentinel_burnin_interconnect_verdict{hostname="node07",verdict="LOW_BANDWIDTH"} '
            '1.0') in text
    assert ('sentinel_burnin_copy_bandwidth_bytes_per_second{gpu="3",hostname="node07",'
            'peer_gpu="0",topology="nvlink"} 1.3e+11') in text
    assert ('sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second{gpu_count="2",'
            'hostname="node07",topology="nvlink"} 3.5e+11') in text
    assert text.count('verdict="LOW_BANDWIDTH"} 1.0') == 3  # the node, and both GPUs


def test_table_shows_the_links(linked_report):
    text = format_table(linked_report)
    assert ("interconnect LOW_BANDWIDTH (nvlink): copy 0->1 390.0 GB/s, copy 1->0 130.0 GB/s, "
            "all-reduce busbw 350.0 GB/s") in text
    assert ("interconnect LOW_BANDWIDTH: copy GPU 1 -> GPU 0 over nvlink: 130.0 GB/s, 66.7% "
            "below the node's best nvlink pair") in text
    assert "GPU 0 LOW_BANDWIDTH: copy GPU 1 -> GPU 0" in text
    events = [json.loads(json_line(e)) for e in result_events(linked_report)]
    assert [e["event"] for e in events] == ["result", "result", "interconnect", "verdict"]
    assert events[-1]["interconnect"] == "LOW_BANDWIDTH" and events[-1]["exit_code"] == 1


@pytest.mark.integration
def test_textfile_with_links_passes_promtool(linked_report, tmp_path):
    path = tmp_path / "burnin.prom"
    write_textfile(path, linked_report)
    check_promtool(path.read_text())
