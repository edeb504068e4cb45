import json
from pathlib import Path

import pytest

from sentinel.burnin.records import GpuRecord, NvmlReading, PerfSample

FIXTURES = Path(__file__).with_name("fixtures")
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def node_records() -> list[GpuRecord]:
    data = json.loads((FIXTURES / "h100_node.json").read_text())
    return [GpuRecord.from_dict(g) for g in data["gpus"]]


def make_record(i: int = 0, tflops: float = 735.0, seconds: int = 30, reasons: int = 0,
                name: str = H100, **kw) -> GpuRecord:
    perf = [PerfSample(t=s + 1.0, flops=tflops * 1e12, seconds=1.0) for s in range(seconds)]
    nvml = [NvmlReading(t=s + 0.5, temperature_c=55.0, power_w=690.0, sm_clock_hz=1470e6,
                        clock_event_reasons=reasons) for s in range(seconds)]
    return GpuRecord(cuda_index=i, nvml_index=i, uuid=f"GPU-{i}", name=name, duration_s=30.0,
                     perf=perf, nvml=nvml, **kw)
