"""Build burn-in records for tests: a GPU's samples without running a GPU."""

from __future__ import annotations

from typing import Any

from sentinel.burnin.records import GpuRecord, NvmlReading, PerfSample

H100 = "NVIDIA H100 80GB HBM3"


def make_record(i: int = 0, tflops: float = 735.0, seconds: int = 30, reasons: int = 0,
                name: str = H100, **kw: Any) -> GpuRecord:
    """Return a record of ``seconds`` 1 s samples at ``tflops`` with ``reasons`` set."""
    perf = [PerfSample(t=s + 1.0, flops=tflops * 1e12, seconds=1.0) for s in range(seconds)]
    nvml = [NvmlReading(t=s + 0.5, temperature_c=55.0, power_w=690.0, sm_clock_hz=1470e6,
                        clock_event_reasons=reasons) for s in range(seconds)]
    return GpuRecord(cuda_index=i, nvml_index=i, uuid=f"GPU-{i}", name=name, duration_s=30.0,
                     perf=perf, nvml=nvml, **kw)
