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
    # Added in v2 (absent from older reports, hence the defaults):
    free_bytes: int | None = None  # device memory free when the test was sized
    concurrent: bool = False  # ran alongside the warm-up matmuls (on memory they do not use)


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
    # Added in v2 (absent from older reports, hence the defaults):
    setup_s: float | None = None  # worker start to first matmul (inputs, reference, memtest)
    warmup_s: float | None = None  # first matmul to the start of the measured window
    warmup_end: str = ""  # why measuring began: steady, cap, fixed, peers ("" before v2)

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



@dataclass
class CopyMeasurement:
    """Device-to-device copies from one GPU to another, timed with CUDA events."""

    src: int  # CUDA index of the GPU the data leaves
    dst: int  # CUDA index of the GPU it arrives on
    topology: str  # how the two are linked (sentinel.burnin.links.TOPOLOGIES)
    bytes_per_copy: int = 0
    copies: int = 0
    seconds: float = 0.0  # GPU time of the timed copies
    p2p: bool | None = None  # direct peer access (False: staged through host memory)
    wrong_bytes: int = 0  # bytes that arrived different from what was sent
    error: str | None = None  # the copy failed or hung
    skipped: str = ""  # why it was not measured (not a failure of the link)

    @property
    def gbps(self) -> float | None:
        """Return the copy bandwidth in GB/s (1e9 bytes), None when nothing was timed."""
        if self.error is not None or self.skipped or self.seconds <= 0:
            return None
        return self.bytes_per_copy * self.copies / self.seconds / 1e9


@dataclass
class AllreduceMeasurement:
    """An all-reduce over every GPU under test, one process per GPU, as nccl-tests times it."""

    gpus: list[int]  # CUDA indices, rank order
    topology: str  # the weakest link between any two of them
    backend: str = "nccl"
    message_bytes: int = 0  # size of one all-reduce's buffer
    iters: int = 0
    seconds_per_iter: float | None = None  # the slowest rank's mean time of one all-reduce
    rank_seconds: list[float] = field(default_factory=list)  # each rank's mean time
    wrong_elements: int = 0  # elements of the checked all-reduce that came out wrong
    version: str = ""  # NCCL version the ranks ran
    env: dict[str, str] = field(default_factory=dict)  # NCCL_* settings the ranks ran with
    error: str | None = None
    phase: str = ""  # where it failed: start (environment), init, check, measure, timeout

    @property
    def algbw_gbps(self) -> float | None:
        """Return the algorithm bandwidth (bytes / time) in GB/s."""
        if self.error is not None or not self.seconds_per_iter:
            return None
        return self.message_bytes / self.seconds_per_iter / 1e9

    @property
    def busbw_gbps(self) -> float | None:
        """Return the bus bandwidth in GB/s: algbw x 2(n-1)/n, nccl-tests' all-reduce factor."""
        alg = self.algbw_gbps
        n = len(self.gpus)
        return None if alg is None or n < 2 else alg * 2.0 * (n - 1) / n


@dataclass
class InterconnectRecord:
    """What the interconnect check measured (or why it measured nothing)."""

    gpus: list[int] = field(default_factory=list)
    copies: list[CopyMeasurement] = field(default_factory=list)
    allreduce: AllreduceMeasurement | None = None
    skipped: str = ""  # why nothing was measured ("" when it ran)
    seconds: float = 0.0  # wall time of the check
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the check itself broke off (CUDA error outside a measurement)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (non-finite floats as strings)."""
        out: dict[str, Any] = encode(asdict(self))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "interconnect") -> InterconnectRecord:
        """Build a record from :meth:`to_dict` output; FormatError names a bad key."""
        return read_dataclass(cls, d, where)
