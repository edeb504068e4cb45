"""What a burn-in records per GPU: the input of the verdict and of every report.

Plain dataclasses with ``to_dict``/``from_dict`` so recorded runs (CPU test fixtures,
``--json`` output) round-trip; ``from_dict`` checks keys and types
(:mod:`sentinel.burnin.typedjson`). Times are seconds since the measured window began.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sentinel.burnin.typedjson import read_dataclass
from sentinel.jsonnum import encode


@dataclass(frozen=True)
class PerfSample:
    """Completed matmul work over one ~1 s interval, timed with CUDA events."""

    t: float  # host time the interval's last chunk was seen complete
    flops: float  # floating-point operations completed in the interval
    seconds: float  # GPU time the interval's work took (CUDA event elapsed time)

    @property
    def tflops(self) -> float:
        """Return the interval's speed in TFLOPS."""
        return self.flops / self.seconds / 1e12 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class NvmlReading:
    """One NVML sample of one GPU (None: NVML could not tell)."""

    t: float
    temperature_c: float | None = None
    power_w: float | None = None
    sm_clock_hz: float | None = None
    clock_event_reasons: int | None = None
    violation_ns: Mapping[str, int] = field(default_factory=dict)
    gpu_lost: bool = False


@dataclass
class CorrectnessResult:
    """How the matmul results compared with the reference."""

    checks: int  # result matrices compared
    mismatches: int  # elements beyond tolerance, summed over every check
    max_abs_error: float  # largest |result - reference| seen (NaN when a NaN appeared)
    tolerance: str  # the rule used, for the evidence
    reference: str  # how the reference was obtained
    reference_mismatches: int = 0  # GPU fp32 reference vs the CPU's rows


@dataclass
class MemtestResult:
    """What the memory test wrote, read back and found."""

    bytes_tested: int
    passes: int  # pattern passes completed over the whole tested area
    mismatches: int  # 8-byte words read back different from what was written
    seconds: float
    patterns: list[str]
    first_bad_offset: int | None = None  # byte offset within the tested area
    examples: list[str] = field(default_factory=list)  # "offset: wrote X read Y"
    note: str = ""


@dataclass
class GpuRecord:
    """Everything one GPU's burn-in recorded."""

    cuda_index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    nvml_index: int | None = None
    dtype: str = "bf16"
    duration_s: float = 0.0  # the measured window asked for
    perf: list[PerfSample] = field(default_factory=list)
    nvml: list[NvmlReading] = field(default_factory=list)
    correctness: CorrectnessResult | None = None
    memtest: MemtestResult | None = None
    error: str | None = None  # the runner failed or the GPU hung
    nvml_error: str | None = None  # why there are no NVML readings

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (non-finite floats as strings)."""
        out: dict[str, Any] = encode(asdict(self))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "record") -> GpuRecord:
        """Build a record from :meth:`to_dict` output (or a hand-written fixture).

        Raises :class:`~sentinel.burnin.typedjson.FormatError` naming the key (under
        ``where``) that is missing, unknown or of the wrong type.
        """
        return read_dataclass(cls, d, where)

