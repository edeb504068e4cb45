"""Every detector, registered in one list. Adding one means a file here and a line below."""

from __future__ import annotations

from sentinel.rules.detectors import (
    diagnosis,
    disk_latency,
    gpu_contention,
    gpu_errors,
    gpu_throttle,
    job_stalled,
    loss_spike,
    throughput_drop,
)
from sentinel.rules.spec import DetectorSpec

# Diagnosis last: it reads the findings of the others in the same cycle.
DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        loss_spike.SPEC,
        throughput_drop.SPEC,
        gpu_throttle.SPEC,
        gpu_contention.SPEC,
        gpu_errors.SPEC,
        disk_latency.SPEC,
        job_stalled.SPEC,
        diagnosis.SPEC,
    )
}
