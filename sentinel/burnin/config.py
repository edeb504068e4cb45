"""The burn-in's configuration section (``burnin:`` in the YAML file).

This module imports nothing beyond the standard library, so the Python API
(:mod:`sentinel.burnin.api`) works on a GPU box that lacks PyYAML; the CLI loads it
through :func:`sentinel.config.load_section` (file, ``SENTINEL_BURNIN_*``, flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.config import check_fields, config_section

DTYPES = ("bf16", "fp8")

# gpu-fryer's default matrix: 8192 x 8192 is large enough for cuBLAS to reach full
# tensor-core speed on H100/A100 and small enough (3 x 128 MiB in bf16) to fit any GPU.
DEFAULT_SIZE = 8192
# 13 s measured: with the steady-state warm-up and the memory test overlapped with it,
# the default verdict fits in 30 s (issue 16). On an H200 the rest of a run is ~14.5 s
# (set-up ~2 s, the memory test beside the first matmuls ~7.5 s, then ~3 s to a steady
# speed, the verdict): 20 s measured gave 33-34 s, 16 s gave 30.5-31 s. Measured H200
# runs hold their speed within +-0.5% from the first measured second
# (docs/BENCHMARKS.md), and a competitor or a wrong result shows within a second or two,
# so the seconds given up were not what caught a slow or wrong GPU; the GPU is still
# under matmul load for ~25 s, past the ~15-20 s its temperature climbs under a burn.
DEFAULT_DURATION_S = 13.0
# gpu-fryer drops the first 5 s: clocks and cuBLAS heuristics settle in that time. In the
# steady mode it is the longest wait for a steady speed after the memory test.
DEFAULT_WARMUP_S = 5.0
WARMUP_MODES = ("steady", "fixed")
# Issue 16, gpu-fryer's rule: a GPU more than 10% behind the best GPU of its node is
# LOW_FLOPS. All GPUs now burn at once, so heat and power differences between GPUs
# add a few percent of spread that a 7% margin (v1) would start to flag.
DEFAULT_TOLERANCE = 0.10
# A copy between two GPUs more than 15% slower than the node's best pair over the same
# kind of link is LOW_BANDWIDTH. Copies over one NVLink generation agree within a few
# percent; 15% leaves room for that while a link running degraded (fewer lanes or
# links, falling back to PCIe) is 2x or more slower.
DEFAULT_BANDWIDTH_TOLERANCE = 0.15
# A few seconds of memory test: one pass of each pattern over ~70 GB takes well under a
# second on HBM3, so 3 s covers several passes without making the burn-in much longer.
DEFAULT_MEMTEST_S = 3.0
# Leave 15% of free memory for the CUDA context, cuBLAS workspace and other tenants.
DEFAULT_MEMTEST_FRACTION = 0.85
# One check reads and writes ~2 GB (a few elementwise passes over the 8192^2 result and
# reference, ~0.7 ms on H100) against 128 matmuls (~190 ms): about 0.4% of the measured
# speed, yet ~5 checks a second.
DEFAULT_CHECK_EVERY = 128
# NVML is sampled once a second, like gpu-fryer's reports and the agent's scrape.
DEFAULT_SAMPLE_INTERVAL_S = 1.0
# A GPU that completes no chunk of work (~0.25 s) within this long is hung.
DEFAULT_HANG_TIMEOUT_S = 30.0


class BurninConfigError(ValueError):
    """A burn-in setting is not valid; the message names the key, the value and what is."""


@config_section("burnin")
@dataclass
class BurninConfig:
    """Settings of ``sentinel burnin`` (and of the controller's burn-in action)."""

    gpus: list[int] = field(
        default_factory=list,
        metadata={"help": "CUDA device indices to test (empty = every visible GPU)"},
    )
    duration: float = field(
        default=DEFAULT_DURATION_S,
        metadata={"help": "measured seconds of matmuls per GPU", "min": 1.0, "max": 86400.0},
    )
    warmup: float = field(
        default=DEFAULT_WARMUP_S,
        metadata={"help": "uncounted matmul seconds before measuring: the longest wait for a "
                          "steady speed (warmup_mode steady) or exactly this long (fixed)",
                  "min": 0.0, "max": 600.0},
    )
    warmup_mode: str = field(
        default="steady",
        metadata={"help": "steady: memory test alongside the first matmuls, measure once "
                          "speed and clocks are steady; fixed: memory test first, then "
                          "exactly `warmup` seconds (sentinel v1)", "choices": WARMUP_MODES},
    )
    dtype: str = field(
        default="bf16", metadata={"help": "matmul input type", "choices": DTYPES}
    )
    size: int = field(
        default=DEFAULT_SIZE,
        metadata={"help": "square matrix size N (N x N matmuls)", "min": 128, "max": 32768},
    )
    tolerance: float = field(
        default=DEFAULT_TOLERANCE,
        metadata={"help": "fraction below the node's best GPU that counts as LOW_FLOPS",
                  "min": 0.0, "max": 0.9},
    )
    interconnect: bool = field(
        default=True,
        metadata={"help": "test copies between every pair of GPUs and an NCCL all-reduce "
                          "over all of them (needs two or more GPUs)"},
    )
    bandwidth_tolerance: float = field(
        default=DEFAULT_BANDWIDTH_TOLERANCE,
        metadata={"help": "fraction below the node's best GPU pair over the same kind of link "
                          "that counts as LOW_BANDWIDTH", "min": 0.0, "max": 0.9},
    )
    baseline_tflops: float | None = field(
        default=None,
        metadata={"help": "TFLOPS floor for every GPU, overriding the shipped table",
                  "min": 0.0},
    )
    baselines_file: str = field(
        default="",
        metadata={"help": "YAML/JSON file of per-model TFLOPS floors replacing the shipped "
                          "table ('' = shipped table)"},
    )
    memtest_seconds: float = field(
        default=DEFAULT_MEMTEST_S,
        metadata={"help": "memory-test time budget per GPU (0 = no memory test)", "min": 0.0,
                  "max": 3600.0},
    )
    memtest_fraction: float = field(
        default=DEFAULT_MEMTEST_FRACTION,
        metadata={"help": "fraction of free GPU memory the memory test covers (0 = off)",
                  "min": 0.0, "max": 0.98},
    )
    check_every: int = field(
        default=DEFAULT_CHECK_EVERY,
        metadata={"help": "compare the result with the reference every N matmuls", "min": 1,
                  "max": 1_000_000},
    )
    sample_interval: float = field(
        default=DEFAULT_SAMPLE_INTERVAL_S,
        metadata={"help": "seconds between NVML samples and speed reports", "min": 0.1,
                  "max": 60.0},
    )
    hang_timeout: float = field(
        default=DEFAULT_HANG_TIMEOUT_S,
        metadata={"help": "seconds without completed work before a GPU counts as hung",
                  "min": 1.0, "max": 3600.0},
    )
    seed: int = field(default=1234, metadata={"help": "seed of the fixed matmul inputs",
                                              "min": -(2**63), "max": 2**63 - 1})
    textfile: str = field(
        default="",
        metadata={"help": "write sentinel_burnin_* metrics to this .prom file ('' = off)"},
    )

    def validate(self) -> None:
        """Check every field against its declared range and choices; raise on the first bad."""
        check_fields(self, "burnin", BurninConfigError)
        if len(set(self.gpus)) != len(self.gpus):
            raise BurninConfigError(f"burnin.gpus: {self.gpus!r} names a GPU twice")
        for g in self.gpus:
            if g < 0:
                raise BurninConfigError(
                    f"burnin.gpus: {g} is not a GPU index (valid: 0, 1, ... as CUDA numbers them)"
                )


def parse_gpu_list(text: str) -> list[int]:
    """Parse ``--gpus 0,3`` into ``[0, 3]``, naming the bad item on error."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit():
            raise BurninConfigError(
                f"--gpus: {item!r} is not a GPU index (valid: comma-separated CUDA device "
                f"numbers such as 0,3)"
            )
        out.append(int(item))
    if not out:
        raise BurninConfigError("--gpus: empty list (valid: comma-separated numbers such as 0,3)")
    return out
