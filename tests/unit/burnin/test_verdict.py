from dataclasses import replace

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.records import CorrectnessResult, NvmlReading
from sentinel.burnin.verdict import Verdict, VerdictConfig, judge, summarize
from sentinel.gpu.reasons import CLOCK_EVENT_REASONS
from tests.support.burnin import H100, make_record

SHIPPED = VerdictConfig(baselines=load_baselines())
HW_SLOWDOWN = CLOCK_EVENT_REASONS["hw_slowdown"]
SW_POWER_CAP = CLOCK_EVENT_REASONS["sw_power_cap"]
SW_THERMAL = CLOCK_EVENT_REASONS["sw_thermal_slowdown"]
HW_THERMAL = CLOCK_EVENT_REASONS["hw_thermal_slowdown"]


def gpu_fryer_throttled(bits: int) -> bool:
    """gpu-fryer's rule: the whole mask equals one of three reasons."""
    return bits in (SW_THERMAL, HW_THERMAL, HW_SLOWDOWN)


def test_recorded_node_gets_one_verdict_per_gpu(node_records):
    verdicts = judge(node_records, SHIPPED)
    assert [v.verdict for v in verdicts] == [
        Verdict.OK, Verdict.OK, Verdict.OK, Verdict.THROTTLED, Verdict.THROTTLED,
        Verdict.WRONG_RESULTS, Verdict.MEMORY_ERRORS, Verdict.NO_WORK]


def test_healthy_gpus_at_power_cap_are_ok(node_records):
    # A real H100 under this load reports SW power cap (0x4) all the time at full speed.
    v = judge(node_records, SHIPPED)[0]
    assert v.ok and v.problems == []
    assert v.stats.power_capped_seconds == 30.0
    assert v.stats.throttle_seconds == 0.0
    assert 720 < v.stats.tflops_median < 750
    assert v.stats.temperature_max_c is not None and v.stats.temperature_max_c > 60


def test_combined_hw_slowdown_bits_are_caught_where_equality_misses(node_records):
    rec = node_records[3]
    masks = {r.clock_event_reasons for r in rec.nvml}
    assert SW_POWER_CAP | HW_SLOWDOWN in masks
    assert not any(gpu_fryer_throttled(m) for m in masks if m is not None)
    v = judge(node_records, SHIPPED)[3]
    assert v.verdict is Verdict.THROTTLED
    ev = v.problems[0].evidence
    assert "hw_slowdown active in 6 of 30 samples" in ev
    assert "0x000c" in ev
    assert v.stats.throttle_seconds == 6.0


def test_sw_thermal_counts_only_when_speed_suffers(node_records):
    v = judge(node_records, SHIPPED)[4]
    assert [p.verdict for p in v.problems] == [Verdict.THROTTLED, Verdict.LOW_FLOPS]
    assert "sw_thermal_slowdown active in 25 of 30 samples" in v.problems[0].evidence
    # The same reason bits at full speed are not a problem.
    fast = make_record(0, tflops=735.0, reasons=SW_POWER_CAP | SW_THERMAL)
    assert judge([fast], SHIPPED)[0].verdict is Verdict.OK


def test_sw_power_cap_slowing_one_gpu_within_its_run():
    rec = make_record(0, tflops=735.0, reasons=0)
    slow = []
    for p in rec.perf:
        slow.append(replace(p, flops=600e12) if 11 <= p.t <= 20 else p)
    nvml = [replace(r, clock_event_reasons=SW_POWER_CAP if 10 <= r.t <= 20 else 0)
            for r in rec.nvml]
    rec = replace(rec, perf=slow, nvml=nvml)
    v = judge([rec], VerdictConfig(baseline_override=400.0))[0]
    assert v.verdict is Verdict.THROTTLED
    assert "sw_power_cap" in v.problems[0].evidence
    assert "600.0 TFLOPS while active vs 735.0 otherwise" in v.problems[0].evidence


def test_wrong_results_evidence(node_records):
    v = judge(node_records, SHIPPED)[5]
    assert v.verdict is Verdict.WRONG_RESULTS
    assert "3 result elements beyond tolerance in 120 checks" in v.problems[0].evidence
    assert "1536" in v.problems[0].evidence


def test_reference_disagreeing_with_cpu_is_wrong_results():
    rec = make_record(0, correctness=CorrectnessResult(
        checks=10, mismatches=0, max_abs_error=0.1, tolerance="t", reference="r",
        reference_mismatches=4))
    v = judge([rec], SHIPPED)[0]
    assert v.verdict is Verdict.WRONG_RESULTS
    assert "disagrees with the CPU in 4" in v.problems[0].evidence


def test_memory_errors_evidence(node_records):
    v = judge(node_records, SHIPPED)[6]
    assert v.verdict is Verdict.MEMORY_ERRORS
    assert "2 words read back wrong in 68.0 GiB" in v.problems[0].evidence
    assert "0x3f2a1c00" in v.problems[0].evidence


def test_gpu_that_did_no_work(node_records):
    verdicts = judge(node_records, SHIPPED)
    v = verdicts[7]
    assert v.verdict is Verdict.NO_WORK
    assert "unspecified launch failure" in v.problems[0].evidence
    assert v.stats.tflops_mean is None
    # A dead GPU does not drag the node's best down nor count as the best.
    assert verdicts[0].node_best_tflops is not None and verdicts[0].node_best_tflops > 700


def test_gpu_that_stopped_midway_is_no_work_with_what_it_did():
    rec = make_record(0, seconds=12, error="GpuHang: no work completed for 30 s (GPU hung?)")
    v = judge([rec], SHIPPED)[0]
    assert v.verdict is Verdict.NO_WORK
    assert "stopped after 12.0 s of work of the 30 s asked" in v.problems[0].evidence


def test_one_slow_gpu_against_the_node_best():
    recs = [make_record(i) for i in range(4)] + [make_record(4, tflops=650.0),
                                                 make_record(5, tflops=670.0)]
    verdicts = judge(recs, VerdictConfig())  # no floors: relative check only
    assert [v.verdict for v in verdicts] == [Verdict.OK] * 4 + [Verdict.LOW_FLOPS, Verdict.OK]
    ev = verdicts[4].problems[0].evidence
    assert "11.6% below the node's best GPU" in ev and "tolerance 10%" in ev
    # 670 is 8.8% below: inside the 10% of issue 16 (v1's 7% flagged it).
    assert verdicts[5].ok
    assert judge(recs, VerdictConfig(tolerance=0.07))[5].verdict is Verdict.LOW_FLOPS


def test_all_slow_node_is_caught_by_the_model_floor():
    recs = [make_record(i, tflops=600.0) for i in range(8)]
    verdicts = judge(recs, SHIPPED)
    assert all(v.verdict is Verdict.LOW_FLOPS for v in verdicts)
    assert "below the 630 TFLOPS floor for NVIDIA H100 80GB HBM3 bf16" in (
        verdicts[0].problems[0].evidence)


def test_one_gpu_node_below_baseline():
    v = judge([make_record(0, tflops=500.0)], SHIPPED)[0]
    assert v.verdict is Verdict.LOW_FLOPS
    assert v.baseline_tflops == 630.0
    assert judge([make_record(0, tflops=735.0)], SHIPPED)[0].ok


def test_override_floor_and_unknown_model():
    rec = make_record(0, tflops=300.0, name="NVIDIA L4")
    v = judge([rec], SHIPPED)[0]
    assert v.ok  # no floor for an L4 and no other GPU: nothing to compare with
    assert any("no TFLOPS floor for 'NVIDIA L4'" in n for n in v.notes)
    v = judge([rec], VerdictConfig(baselines=SHIPPED.baselines, baseline_override=350.0))[0]
    assert v.verdict is Verdict.LOW_FLOPS


def test_case_blind_model_name_match():
    v = judge([make_record(0, tflops=500.0, name=H100.upper())], SHIPPED)[0]
    assert v.verdict is Verdict.LOW_FLOPS


def test_several_problems_are_all_reported_most_severe_first():
    rec = make_record(0, tflops=500.0, reasons=HW_THERMAL | SW_POWER_CAP,
                      correctness=CorrectnessResult(checks=5, mismatches=1, max_abs_error=9.0,
                                                    tolerance="t", reference="r"))
    v = judge([rec], SHIPPED)[0]
    assert [p.verdict for p in v.problems] == [
        Verdict.WRONG_RESULTS, Verdict.THROTTLED, Verdict.LOW_FLOPS]
    assert v.verdict is Verdict.WRONG_RESULTS


def test_no_nvml_still_judges_speed_and_says_throttling_was_not_checked():
    rec = replace(make_record(0, tflops=500.0), nvml=[], nvml_error="nvmlInit failed")
    v = judge([rec], SHIPPED)[0]
    assert v.verdict is Verdict.LOW_FLOPS
    assert any("throttling not checked" in n for n in v.notes)


def test_violation_counter_growth_is_summarised():
    rec = make_record(0)
    nvml = [replace(r, violation_ns={"power": int(r.t * 1e9), "thermal": 0}) for r in rec.nvml]
    st = summarize(replace(rec, nvml=nvml))
    assert st.violation_seconds == {"power": 29.0, "thermal": 0.0}


def test_lost_gpu_is_noted():
    rec = make_record(0)
    rec.nvml.append(NvmlReading(t=31.0, gpu_lost=True))
    assert any("lost" in n for n in judge([rec], SHIPPED)[0].notes)


def test_power_capped_gpu_slowed_by_another_process_is_low_flops_not_throttled():
    # Contention: same clocks and power cap as its healthy peers, half the speed.
    recs = [make_record(i, reasons=SW_POWER_CAP) for i in range(3)]
    recs.append(make_record(3, tflops=370.0, reasons=SW_POWER_CAP))
    v = judge(recs, SHIPPED)[3]
    assert [p.verdict for p in v.problems] == [Verdict.LOW_FLOPS]
    assert "49.7% below the node's best GPU" in v.problems[0].evidence
    # One GPU alone at power cap, below its floor: the same, caught by the floor.
    v1 = judge([make_record(0, tflops=370.0, reasons=SW_POWER_CAP)], SHIPPED)[0]
    assert [p.verdict for p in v1.problems] == [Verdict.LOW_FLOPS]


def test_power_cap_with_lower_clocks_on_a_slow_gpu_is_throttled():
    recs = [make_record(i, reasons=SW_POWER_CAP) for i in range(3)]
    slow = make_record(3, tflops=600.0, reasons=SW_POWER_CAP)
    slow = replace(slow, nvml=[replace(r, sm_clock_hz=1200e6) for r in slow.nvml])
    v = judge([*recs, slow], SHIPPED)[3]
    assert [p.verdict for p in v.problems] == [Verdict.THROTTLED, Verdict.LOW_FLOPS]
    assert "SM clock median 1200 MHz vs 1470 MHz on the best GPU" in v.problems[0].evidence
