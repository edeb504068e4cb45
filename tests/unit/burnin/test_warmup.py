"""Steady-state warm-up detection on sample sequences, and the shared measuring gate."""

import itertools
import json
from pathlib import Path

import pytest

from sentinel.burnin.warmup import (
    CAP,
    FIXED,
    MIN_WARMUP_S,
    STEADY,
    Chunk,
    MeasureGate,
    WarmupTracker,
    is_steady,
)

FIXTURES = Path(__file__).with_name("fixtures")


def chunks(tflops, seconds=0.25, start=0.0):
    out, t = [], start
    for tf in tflops:
        t += seconds
        out.append(Chunk(done_at=t, seconds=seconds, tflops=tf))
    return out


def test_a_steady_speed_with_steady_clocks_is_steady():
    assert is_steady(chunks([661, 663, 660, 662, 661]), [1455e6, 1470e6])


def test_a_speed_still_falling_to_the_power_cap_is_not():
    # Boost clocks for the first chunks, then the power cap pulls the speed down.
    ramp = chunks([790, 760, 700, 670, 662])
    assert not is_steady(ramp, [1455e6, 1470e6])
    assert is_steady(ramp + chunks([661, 662, 660, 661], start=1.25), [1455e6, 1470e6])


def test_less_than_a_second_of_chunks_is_not_enough():
    assert not is_steady(chunks([661, 662, 661]), [1455e6, 1470e6])  # 0.75 s
    assert not is_steady(chunks([661], seconds=2.0), [1455e6, 1470e6])  # one chunk


def test_clocks_still_ramping_or_too_few_readings_are_not_steady():
    speed = chunks([661, 662, 661, 662])
    assert not is_steady(speed, [1980e6, 1470e6])  # boost -> power cap: 26% apart
    assert not is_steady(speed, [1470e6])  # one reading says nothing about change
    assert not is_steady(speed, [])
    # Without NVML the speed alone decides.
    assert is_steady(speed, None)


def test_the_recorded_h200_run_is_steady_from_its_first_measured_second():
    """The v1 capture (20 s after a fixed 5 s warm-up): steady at every point."""
    d = json.loads((FIXTURES / "h200_v1_pass.report.json").read_text())
    rec = d["gpus"][0]["record"]
    perf = [Chunk(p["t"], p["seconds"], p["flops"] / p["seconds"] / 1e12) for p in rec["perf"]]
    clocks = [r["sm_clock_hz"] for r in rec["nvml"]]
    for i in range(3, len(perf)):
        assert is_steady(perf[:i], clocks[:i]), i


def test_tracker_ends_on_steady_speed_after_the_minimum():
    tr = WarmupTracker("steady", start=0.0, cap_s=5.0)
    for c in chunks([661, 662, 661, 662, 661]):
        tr.add(c)
    assert tr.check(MIN_WARMUP_S - 0.1, [1455e6, 1470e6]) == ""  # too early
    assert tr.check(1.3, [1455e6, 1470e6]) == STEADY
    assert tr.check(99.0, None) == STEADY  # the answer sticks


def test_tracker_gives_up_at_the_cap():
    tr = WarmupTracker("steady", start=10.0, cap_s=5.0)
    for c in chunks([600, 700, 620, 710, 640, 690], start=10.0):
        tr.add(c)
    assert tr.check(14.0, [1455e6, 1470e6]) == ""
    assert tr.check(15.0, [1455e6, 1470e6]) == CAP


def test_fixed_mode_waits_exactly_the_warmup():
    tr = WarmupTracker("fixed", start=0.0, cap_s=5.0)
    for c in chunks([661] * 8):
        tr.add(c)
    assert tr.check(4.9, [1455e6, 1470e6]) == ""
    assert tr.check(5.0, [1455e6, 1470e6]) == FIXED


def test_no_warmup_asked_is_not_a_gpu_that_never_settled():
    tr = WarmupTracker("steady", start=0.0, cap_s=0.0)
    assert tr.check(0.01, None) == FIXED


def test_restart_drops_what_ran_beside_the_memory_test():
    tr = WarmupTracker("steady", start=0.0, cap_s=5.0)
    for c in chunks([330, 331, 330, 331, 330]):  # half speed beside the memory test: steady!
        tr.add(c)
    tr.restart(3.0)
    assert tr.chunks == []
    assert tr.check(3.5, [1455e6, 1470e6]) == ""  # the cap and minimum count from 3.0
    assert tr.check(8.0, [1455e6, 1470e6]) == CAP


def test_tracker_keeps_only_about_a_second_of_chunks():
    tr = WarmupTracker("steady", start=0.0, cap_s=600.0)
    for c in chunks([661] * 1000):
        tr.add(c)
    assert len(tr.chunks) <= 6


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_gate_opens_when_every_gpu_is_ready():
    clock = Clock()
    gate = MeasureGate([0, 1, 2], lag_s=5.0, clock=clock)
    clock.t = 3.0
    gate.ready(1)
    gate.ready(0)
    assert gate.opened_at() is None
    clock.t = 4.0
    gate.ready(2)
    assert gate.opened_at() == 4.0


def test_gate_stops_waiting_for_a_late_gpu_after_the_lag():
    clock = Clock()
    gate = MeasureGate([0, 1], lag_s=5.0, clock=clock)
    clock.t = 2.0
    gate.ready(0)
    clock.t = 6.9
    assert gate.opened_at() is None
    clock.t = 7.0
    assert gate.opened_at() == 7.0
    gate.ready(1)  # late: the window is already open
    assert gate.opened_at() == 7.0


def test_a_failed_gpu_does_not_hold_the_others():
    clock = Clock()
    gate = MeasureGate([0, 1], lag_s=5.0, clock=clock)
    gate.leave(1)  # failed during set-up
    assert gate.opened_at() is None  # nobody is ready yet
    clock.t = 1.5
    gate.ready(0)
    assert gate.opened_at() == 1.5


@pytest.mark.parametrize("order", list(itertools.permutations(["r0", "r1", "l2"])))
def test_gate_opens_once_whatever_the_order(order):
    clock = Clock()
    gate = MeasureGate([0, 1, 2], lag_s=5.0, clock=clock)
    for step in order:
        clock.t += 1.0
        (gate.ready if step[0] == "r" else gate.leave)(int(step[1]))
    assert gate.opened_at() == clock.t

