import pytest

from sentinel.gpu.reasons import BAD_REASONS
from sentinel.rules.detectors import disk_latency, gpu_errors, gpu_throttle, job_stalled
from sentinel.rules.window import Series, StepPoint, Window


def pts(values, t0=0.0, dt=5.0):
    return [(t0 + i * dt, float(v)) for i, v in enumerate(values)]


def test_combined_throttle_bits_count():
    # hw_slowdown | sw_power_cap = 0x0C: an equality test against 0x08 would miss it.
    s = Series({"hostname": "h1", "gpu": "0", "UUID": "GPU-a"}, pts([0x0C] * 70 + [0] * 50))
    (f,) = gpu_throttle.detect(Window(series={"clock_event_reasons": [s]}), gpu_throttle.Params())
    assert f.node == "h1" and f.gpu == "0" and "hw_slowdown" in f.evidence["reasons"]
    assert f.evidence["fraction"] == pytest.approx(70 / 120)


def test_power_cap_alone_and_short_throttle_are_not_findings():
    cap = Series({"hostname": "h1", "gpu": "0"}, pts([0x4] * 120))
    short = Series({"hostname": "h1", "gpu": "1"}, pts([0x8] * 20 + [0] * 100))
    assert gpu_throttle.detect(Window(series={"clock_event_reasons": [cap, short]}),
                               gpu_throttle.Params()) == []


def test_per_reason_series_with_only_active_samples_use_the_window_length():
    # The default rule asks Prometheus only for active samples (`> 0`).
    active = Series({"hostname": "h", "gpu": "2", "reason": "hw_thermal_slowdown"},
                    pts([1] * 30, t0=300))
    w = Window(series={"clock_event_reasons": [active]}, step_s=5.0, range_s=600.0)
    assert gpu_throttle.detect(w, gpu_throttle.Params()) == []  # 30 of 121 samples
    w.series["clock_event_reasons"][0].points = pts([1] * 100, t0=100)
    (f,) = gpu_throttle.detect(w, gpu_throttle.Params())
    assert f.evidence["reasons"] == ["hw_thermal_slowdown"]


@pytest.mark.parametrize("reason", BAD_REASONS)
def test_each_shared_bad_reason_alone_is_a_finding(reason):
    """The default reasons are sentinel.gpu.reasons' bad set, sw_thermal_slowdown included."""
    s = Series({"hostname": "h", "gpu": "0", "reason": reason}, pts([1] * 100))
    (f,) = gpu_throttle.detect(Window(series={"clock_event_reasons": [s]}), gpu_throttle.Params())
    assert f.evidence["reasons"] == [reason]
    assert sorted(gpu_throttle.Params().reasons) == sorted(BAD_REASONS)


def test_hot_gpu():
    temp = Series({"hostname": "h", "gpu": "0"}, pts([88] * 100))
    lim = Series({"hostname": "h", "gpu": "0"}, pts([90] * 100))
    w = Window(series={"temperature": [temp], "slowdown_temperature": [lim]})
    (f,) = gpu_throttle.detect(w, gpu_throttle.Params())
    assert f.kind == "gpu_hot"


def test_xid_classes_and_other_errors():
    w = Window(series={
        "xid_new": [Series({"hostname": "h", "gpu": "1", "xid": "79"}, pts([1])),
                    Series({"hostname": "h", "gpu": "2", "xid": "13"}, pts([2]))],
        "ecc_uncorrected_new": [Series({"hostname": "h", "gpu": "3"}, pts([0, 4]))],
        "remap_failure": [Series({"hostname": "h", "gpu": "4"}, pts([0]))],
        "gpu_up": [Series({"hostname": "g", "gpu": "5"}, pts([1, 0]))],
    })
    by_kind = {(f.kind, f.gpu): f for f in gpu_errors.detect(w, gpu_errors.Params())}
    assert by_kind[("gpu_xid", "1")].suggested_action == "spare_swap"
    assert by_kind[("gpu_xid", "1")].severity == "critical"
    assert by_kind[("gpu_xid", "2")].evidence["class"] == "application"
    assert by_kind[("gpu_xid", "2")].suggested_action == "notify"
    assert by_kind[("gpu_ecc_uncorrected", "3")].evidence["count"] == 4
    assert ("gpu_remap_failure", "4") not in by_kind
    assert by_kind[("gpu_lost", "5")].node == "g"


def test_an_xid_finding_starts_when_its_series_first_shows_it():
    # Values are increases over the rule's window: 0 until the XID, then 1.
    series = Series({"hostname": "h", "gpu": "1", "xid": "79"}, pts([0, 0, 0, 1, 1]))
    (f,) = gpu_errors.detect(Window(series={"xid_new": [series]}), gpu_errors.Params())
    assert f.time_start == series.points[3][0]


def test_disk_latency_ignores_intervals_without_reads():
    """0 means no read in the interval: an often idle disk's baseline is its reads' latency."""
    idle_then_busy = [0.0, 0.0003] * 40 + [0.08] * 20 + [0.0003] * 20
    w = Window(series={"disk_read_latency": [
        Series({"hostname": "node2", "device": "loop2"}, pts(idle_then_busy, dt=1.0))]},
        step_s=1.0)
    (f,) = disk_latency.detect(w, disk_latency.Params(sustain_s=5.0, baseline_s=40.0))
    assert f.node == "node2" and f.evidence["baseline_s"] == pytest.approx(0.0003)
    assert f.summary == "read latency on node2 loop2 at 80 ms, 267x its baseline 0.3 ms"


def test_disk_latency_against_own_baseline():
    base = [0.002] * 80 + [0.08] * 20 + [0.002] * 20
    other = [0.03] * 120  # a slow disk that is always slow is its own normal
    w = Window(series={"disk_read_latency": [
        Series({"hostname": "a", "device": "nvme0n1"}, pts(base)),
        Series({"hostname": "b", "device": "sda"}, pts(other))]})
    (f,) = disk_latency.detect(w, disk_latency.Params())
    assert f.node == "a" and f.state == "resolved" and f.evidence["peak_s"] == 0.08


def test_job_stalled_gap_and_ongoing():
    steps = [StepPoint(step=i, loss=1.0, time=float(i)) for i in range(100)]
    steps += [StepPoint(step=100 + i, loss=1.0, time=300.0 + i) for i in range(50)]
    out = job_stalled.detect(Window(steps=steps, now=349.0), job_stalled.Params())
    assert [(f.step_start, f.state) for f in out] == [(99, "resolved")]
    out = job_stalled.detect(Window(steps=steps, now=500.0), job_stalled.Params())
    assert [(f.step_start, f.state) for f in out] == [(99, "resolved"), (149, "firing")]


def test_job_stalled_from_agent_series():
    since = Series({"job": "j", "hostname": "h"}, pts([1, 2, 3, 200]))
    dur = Series({"job": "j", "hostname": "h"}, pts([2.0] * 4))
    (f,) = job_stalled.detect(Window(series={"seconds_since_last_report": [since],
                                             "step_duration": [dur]}), job_stalled.Params())
    assert f.state == "firing" and f.node == "h" and f.job == "j"


def test_the_contention_query_counts_processes_beyond_the_ranks(tmp_path):
    """The shipped gpu-contention PromQL, evaluated by promtool: GPU U0 has its rank and
    a second process (1 extra), U1 no rank and one process (1 extra), U2 only its rank."""
    import subprocess

    import yaml

    from sentinel.rules.rulefile import load_rules
    from tests.support.services import need_binary

    promtool = need_binary("promtool", "prometheus")
    (rule,) = [r for r in load_rules() if r.name == "gpu-contention"]
    rules = tmp_path / "r.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "extra", "expr": rule.series["extra_processes"]}]}]}))
    procs = 'sentinel_gpu_compute_processes{hostname="n1",gpu="%s",UUID="%s",instance="a"}'
    rank = 'sentinel_train_rank_info{job="j",rank="%s",pid="1",UUID="%s",hostname="n1"}'
    test = tmp_path / "t.yml"
    test.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m",
                                    "tests": [{"interval": "1m", "input_series": [
        {"series": procs % ("0", "U0"), "values": "2x5"},
        {"series": procs % ("1", "U1"), "values": "1x5"},
        {"series": procs % ("2", "U2"), "values": "1x5"},
        {"series": rank % ("0", "U0"), "values": "1x5"},
        {"series": rank % ("2", "U2"), "values": "1x5"},
    ], "promql_expr_test": [{"expr": "extra", "eval_time": "2m", "exp_samples": [
        {"labels": 'extra{hostname="n1",gpu="0",UUID="U0"}', "value": 1},
        {"labels": 'extra{hostname="n1",gpu="1",UUID="U1"}', "value": 1},
    ]}]}]}))
    r = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
