"""The interconnect verdict on constructed measurements, and how it joins the GPU verdicts."""

import pytest

from sentinel.burnin.baselines import LinkFloor, load_link_floors
from sentinel.burnin.link_verdict import LinkVerdict, judge_interconnect
from sentinel.burnin.records import AllreduceMeasurement, CopyMeasurement, InterconnectRecord
from sentinel.burnin.verdict import Verdict, VerdictConfig, judge
from tests.support.burnin import make_record

H200 = "NVIDIA H200"
NAMES = {i: H200 for i in range(4)}
FLOORS = {H200: {"nvlink": LinkFloor(copy_gbps=300.0, allreduce_busbw_gbps={2: 250.0, 4: 280.0},
                                     source="test floors")}}
MIB = 1 << 20


def copy(src, dst, gbps, topology="nvlink", **kw):
    """A copy measurement that ran at ``gbps`` GB/s (100 copies of 256 MiB)."""
    nbytes = 256 * MIB
    return CopyMeasurement(src=src, dst=dst, topology=topology, bytes_per_copy=nbytes,
                           copies=100, seconds=nbytes * 100 / (gbps * 1e9), p2p=True, **kw)


def allreduce(gpus, busbw, **kw):
    """An all-reduce whose bus bandwidth is ``busbw`` GB/s."""
    n = len(gpus)
    algbw = busbw / (2 * (n - 1) / n)
    return AllreduceMeasurement(gpus=list(gpus), topology="nvlink", message_bytes=256 * MIB,
                                iters=20, seconds_per_iter=256 * MIB / (algbw * 1e9), **kw)


def pairs(n, gbps=390.0):
    return [copy(a, b, gbps) for a in range(n) for b in range(n) if a != b]


def run(rec, floors=FLOORS, tol=0.15):
    return judge_interconnect(rec, NAMES, "nvlink", floors, tol)


def test_bus_bandwidth_is_nccl_tests_formula():
    a = AllreduceMeasurement(gpus=[0, 1, 2, 3], topology="nvlink", message_bytes=10**9,
                             iters=20, seconds_per_iter=0.01)
    assert a.algbw_gbps == pytest.approx(100.0)
    assert a.busbw_gbps == pytest.approx(150.0)  # 2 (n-1) / n = 1.5 for four GPUs
    two = AllreduceMeasurement(gpus=[0, 1], topology="nvlink", message_bytes=10**9, iters=20,
                               seconds_per_iter=0.01)
    assert two.busbw_gbps == pytest.approx(100.0)  # two GPUs: bus = algorithm bandwidth
    assert AllreduceMeasurement(gpus=[0, 1], topology="nvlink", error="x").busbw_gbps is None


def test_healthy_links_are_ok():
    v = run(InterconnectRecord(gpus=[0, 1], copies=pairs(2), allreduce=allreduce([0, 1], 330.0)))
    assert v.verdict is LinkVerdict.OK and v.problems == [] and v.ok
    assert v.copy_floor_gbps == 300.0 and v.allreduce_floor_gbps == 250.0


def test_one_slow_pair_against_the_nodes_best_is_named():
    copies = pairs(4)
    copies[4] = copy(1, 2, 200.0)  # GPU 1 -> GPU 2 runs at half speed
    v = run(InterconnectRecord(gpus=[0, 1, 2, 3], copies=copies), floors={})
    assert v.verdict is LinkVerdict.LOW_BANDWIDTH
    (p,) = v.problems
    assert p.verdict is Verdict.LOW_BANDWIDTH and p.gpus == [1, 2]
    assert p.evidence == ("copy GPU 1 -> GPU 2 over nvlink: 200.0 GB/s, 48.7% below the "
                          "node's best nvlink pair (GPU 0 -> GPU 1: 390.0 GB/s; tolerance 15%)")
    assert any("no copy-bandwidth floor for 'NVIDIA H200' over nvlink" in n for n in v.notes)


def test_within_tolerance_of_the_best_is_fine():
    copies = pairs(2)
    copies[1] = copy(1, 0, 340.0)  # 12.8% below 390: inside the 15% tolerance
    assert run(InterconnectRecord(gpus=[0, 1], copies=copies)).verdict is LinkVerdict.OK


def test_pairs_are_compared_only_with_pairs_over_the_same_kind_of_link():
    copies = [copy(0, 1, 390.0), copy(1, 0, 390.0), copy(0, 2, 40.0, "sys"),
              copy(2, 0, 41.0, "sys")]
    assert run(InterconnectRecord(gpus=[0, 1, 2], copies=copies), floors={}).ok


def test_all_pairs_slow_are_caught_by_the_floor():
    v = run(InterconnectRecord(gpus=[0, 1], copies=pairs(2, gbps=120.0)))
    assert [p.evidence for p in v.problems] == [
        "copy GPU 0 -> GPU 1 over nvlink: 120.0 GB/s, below the 300 GB/s floor for NVIDIA H200",
        "copy GPU 1 -> GPU 0 over nvlink: 120.0 GB/s, below the 300 GB/s floor for NVIDIA H200"]


def test_a_failed_copy_and_corrupted_data():
    copies = [copy(0, 1, 390.0, wrong_bytes=4096),
              CopyMeasurement(src=1, dst=0, topology="nvlink",
                              error="CopyHang: a copy from GPU 1 to GPU 0 did not complete")]
    v = run(InterconnectRecord(gpus=[0, 1], copies=copies))
    assert v.verdict is LinkVerdict.WRONG_RESULTS
    assert [(p.verdict, p.gpus) for p in v.problems] == [
        (Verdict.WRONG_RESULTS, [0, 1]), (Verdict.LOW_BANDWIDTH, [1, 0])]
    assert "4096 of 268435456 bytes arrived different" in v.problems[0].evidence
    assert v.problems[1].evidence.startswith("copy GPU 1 -> GPU 0 over nvlink failed: CopyHang")


def test_skipped_copies_are_notes_not_failures():
    copies = [copy(0, 1, 390.0), CopyMeasurement(src=1, dst=0, topology="nvlink",
                                                 skipped="too little free memory")]
    v = run(InterconnectRecord(gpus=[0, 1], copies=copies))
    assert v.ok and "copy GPU 1 -> GPU 0 over nvlink not measured: too little free memory" in (
        v.notes)


def test_allreduce_below_its_floor_for_that_gpu_count():
    v = run(InterconnectRecord(gpus=[0, 1, 2, 3], copies=pairs(4),
                               allreduce=allreduce([0, 1, 2, 3], 200.0)))
    (p,) = v.problems
    assert p.gpus == [0, 1, 2, 3]
    assert p.evidence == ("all-reduce (nccl) over GPUs 0,1,2,3 (nvlink): bus bandwidth 200.0 "
                          "GB/s, below the 280 GB/s floor for 4x NVIDIA H200")


def test_allreduce_without_a_floor_for_its_gpu_count_is_noted():
    v = run(InterconnectRecord(gpus=[0, 1, 2], copies=pairs(3),
                               allreduce=allreduce([0, 1, 2], 10.0)))
    assert v.ok
    assert any(n.startswith("no all-reduce floor for 3x 'NVIDIA H200' over nvlink (test "
                            "floors): bus bandwidth 10.0 GB/s not judged") for n in v.notes)


@pytest.mark.parametrize("phase, failed", [("start", False), ("init", True),
                                           ("timeout", True), ("measure", True)])
def test_allreduce_errors(phase, failed):
    a = AllreduceMeasurement(gpus=[0, 1], topology="nvlink", error="boom", phase=phase)
    v = run(InterconnectRecord(gpus=[0, 1], copies=pairs(2), allreduce=a))
    assert (v.verdict is LinkVerdict.LOW_BANDWIDTH) is failed
    if failed:
        assert v.problems[0].evidence == (f"all-reduce (nccl) over GPUs 0,1 (nvlink) failed "
                                          f"({phase}): boom")
    else:  # the ranks could not start: the environment, not the links
        assert "all-reduce (nccl) over GPUs 0,1 (nvlink) not measured: boom" in v.notes


def test_wrong_allreduce_results():
    v = run(InterconnectRecord(gpus=[0, 1], copies=pairs(2),
                               allreduce=allreduce([0, 1], 330.0, wrong_elements=7)))
    assert v.verdict is LinkVerdict.WRONG_RESULTS
    assert "7 of 67108864 elements of the checked all-reduce came out wrong" in (
        v.problems[0].evidence)


def test_one_gpu_says_it_needs_two():
    rec = InterconnectRecord(gpus=[0], skipped="it needs two or more GPUs (this burn-in has 1: "
                                               "GPU 0)")
    v = run(rec)
    assert v.verdict is LinkVerdict.SKIPPED and v.ok
    assert v.notes == ["interconnect not tested: it needs two or more GPUs (this burn-in has "
                       "1: GPU 0)"]


def test_link_problems_join_the_gpu_verdicts_and_the_exit_code():
    copies = pairs(4)
    copies[4] = copy(1, 2, 200.0)
    ic = run(InterconnectRecord(gpus=[0, 1, 2, 3], copies=copies), floors={})
    recs = [make_record(i, name=H200, tflops=660.0) for i in range(4)]
    verdicts = judge(recs, VerdictConfig(), ic.gpu_problems())
    assert [v.verdict for v in verdicts] == [Verdict.OK, Verdict.LOW_BANDWIDTH,
                                             Verdict.LOW_BANDWIDTH, Verdict.OK]
    assert verdicts[1].problems[0].data["gpus"] == [1, 2]
    # A GPU's own problem stays its primary verdict; the link is reported beside it.
    recs[2] = make_record(2, name=H200, tflops=500.0)
    v2 = judge(recs, VerdictConfig(), ic.gpu_problems())[2]
    assert [p.verdict for p in v2.problems] == [Verdict.LOW_FLOPS, Verdict.LOW_BANDWIDTH]


def test_shipped_h200_nvlink_floors_are_measured_and_judge_a_slow_link():
    floors = load_link_floors()
    f = floors[H200]["nvlink"]
    # Written by scripts/update_burnin_floors.py from the 2x H200 run (docs/BENCHMARKS.md).
    assert f.copy_gbps == 348 and f.allreduce_busbw_gbps == {2: 266}
    assert f.source.startswith("measured 2026-11-29 on 2x NVIDIA H200")
    slow = pairs(2, gbps=150.0)  # PCIe-like: under the floor
    v = judge_interconnect(InterconnectRecord(gpus=[0, 1], copies=slow), NAMES, "nvlink",
                           floors, 0.15)
    assert v.verdict is LinkVerdict.LOW_BANDWIDTH
    ok = judge_interconnect(InterconnectRecord(gpus=[0, 1], copies=pairs(2)), NAMES,
                            "nvlink", floors, 0.15)
    assert not any("to be measured" in n for n in ok.notes)


def test_a_check_that_broke_off_fails_every_gpu_it_was_testing():
    rec = InterconnectRecord(gpus=[0, 1], copies=pairs(2)[:1],
                             error="AcceleratorError: CUDA error: unspecified launch failure")
    v = run(rec)
    assert v.verdict is LinkVerdict.LOW_BANDWIDTH
    assert v.problems[0].gpus == [0, 1]
    assert v.problems[0].evidence == ("the interconnect check broke off: AcceleratorError: "
                                      "CUDA error: unspecified launch failure")
