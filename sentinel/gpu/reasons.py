"""The NVML clock-event (throttle) reasons: their names, bits and groupings, in one place.

NVML reports why clocks are below their target as a bitmask (``nvmlClocksEventReason*``
in nvml.h, once called "throttle reasons"); the agent exports one 0/1 series per reason
(``sentinel_gpu_clock_event_active{reason=...}``). Every part that counts reasons uses
the names and groups below: the agent's gpu collector, the ``gpu_throttle`` detector,
burn-in's verdict and the dashboards import them; ``alerts/sentinel.rules.yml`` and
``sentinel/rules/default_rules.yml`` are hand-written and checked against them by
``tests/unit/gpu/test_reasons_drift.py``.

Pure data, no NVML import: the rules engine and the dashboards use it on machines
without a GPU.
"""

from __future__ import annotations

# Reason name (the `reason` label value) -> bit, from nvml.h (nvmlClocksEventReason*).
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

# The board slows itself to protect the hardware (overheating, an external slowdown
# signal, the power brake). Never normal under load: one second of it in a burn-in is a
# finding.
HW_THROTTLE_REASONS: tuple[str, ...] = (
    "hw_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
)

# The driver slows the GPU because it runs hot, before the hardware limit is reached.
# Not normal either: it means cooling is short.
SW_THERMAL_REASON = "sw_thermal_slowdown"

# The driver holds power at the limit. Normal under full load (a healthy H100 running
# matmuls sits at 0x4 throughout: tests/fixtures/h100), so it never counts on its own.
POWER_CAP_REASON = "sw_power_cap"

# What the alert, the gpu_throttle detector, the dashboards' "hard-throttled" panels and
# burn-in's throttle time count: slowed by heat or by hardware protection, not by the
# workload or a setting. gpu-fryer's bad list (HW slowdown, HW thermal, SW thermal)
# plus the power brake. (Ordered as the dashboards' queries have always listed them.)
BAD_REASONS: tuple[str, ...] = (
    "hw_slowdown",
    "hw_thermal_slowdown",
    SW_THERMAL_REASON,
    "hw_power_brake_slowdown",
)

# Reasons that say nothing about the GPU's health: idle, or clocks set by a person or
# an application (application clocks, sync boost, display clocks).
BENIGN_REASONS: tuple[str, ...] = (
    "gpu_idle",
    "applications_clocks_setting",
    "sync_boost",
    "display_clock_setting",
)


def mask(reasons: tuple[str, ...] | list[str]) -> int:
    """Return the bitmask of the named reasons (KeyError naming an unknown one)."""
    out = 0
    for r in reasons:
        out |= CLOCK_EVENT_REASONS[r]
    return out


def names(bits: int, among: tuple[str, ...] = BAD_REASONS) -> list[str]:
    """Return the reasons of ``among`` (default: the bad ones) set in ``bits``, in order."""
    return [r for r in among if bits & CLOCK_EVENT_REASONS[r]]


# The bad reasons as one mask: a node record or a finding names them when set.
BAD_MASK = mask(BAD_REASONS)


def promql_regex(reasons: tuple[str, ...] | list[str]) -> str:
    """Return the alternation for a ``reason=~"..."`` matcher over ``reasons``."""
    return "|".join(reasons)


BAD_MASK = mask(BAD_REASONS)
POWER_CAP_MASK = CLOCK_EVENT_REASONS[POWER_CAP_REASON]
