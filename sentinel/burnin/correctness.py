"""Fixed matmul inputs, an independent reference, and the on-GPU result check.

The reference is the fp32 product of the same (bf16- or fp8-rounded) inputs, computed
once per GPU on its non-tensor-core fp32 path with TF32 off, so a tensor-core fault
cannot corrupt the reference in the same way it corrupts the result. A few rows of
that reference are recomputed on the CPU, so even a GPU whose fp32 path is broken is
caught (``reference_mismatches``).

The check runs on the GPU, in the matmul stream, into device-side accumulators: the
timed loop never waits for the host. Its counts are read once, at the end.

Tolerance. A bf16 result is the fp32-accumulated sum rounded to bf16: a relative
error of at most 2^-8 (half an ulp of an 8-bit significand). Accumulation order adds
~sqrt(K) * 2^-24 * rms, far smaller. We allow |result - ref| <= RTOL * |ref| + ATOL *
rms(ref) with RTOL = ATOL = 2^-6, four times the rounding bound, so no correct result
fails, while a flipped exponent or high significand bit, a NaN or a stale tile does.
fp8 (e4m3) inputs go through tensor cores that accumulate with fewer bits (about 14 on
H100), so fp8 gets 2^-5.
"""

from __future__ import annotations

from typing import Any

REFERENCE_ROWS = 8  # rows of the reference recomputed on the CPU (1 GFLOP at N=8192)
RTOL = {"bf16": 2.0**-6, "fp8": 2.0**-5}
ATOL_RMS = {"bf16": 2.0**-6, "fp8": 2.0**-5}
# fp32 on the GPU vs fp32 on the CPU differ only in summation order (~1e-6 of rms);
# 1e-3 of rms leaves a wide margin and still catches any real fault.
REFERENCE_ATOL_RMS = 1e-3


def make_inputs(torch: Any, n: int, seed: int) -> tuple[Any, Any]:
    """Return fixed-seed N x N bf16 inputs on the CPU (the same on every GPU and run)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float32).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g, dtype=torch.float32).to(torch.bfloat16)
    return a, b


def quantize(torch: Any, x: Any, dtype: str) -> Any:
    """Return ``x`` in the matmul's input type (bf16 stays, fp8 becomes e4m3)."""
    if dtype == "fp8":
        return x.to(torch.float8_e4m3fn)
    return x


def reference_row_indices(torch: Any, n: int) -> Any:
    """Return the rows checked on the CPU, spread over the matrix."""
    return torch.linspace(0, n - 1, min(REFERENCE_ROWS, n)).round().long()


def cpu_reference_rows(torch: Any, a: Any, b: Any, dtype: str) -> Any:
    """Return fp32 rows ``reference_row_indices`` of the product, computed on the CPU."""
    rows = reference_row_indices(torch, a.shape[0])
    qa = quantize(torch, a[rows], dtype).float()
    qb = quantize(torch, b, dtype).float()
    return qa @ qb


def count_reference_mismatches(torch: Any, ref: Any, cpu_rows: Any) -> int:
    """Return how many elements of the GPU reference's checked rows the CPU disagrees with."""
    rows = reference_row_indices(torch, ref.shape[0]).to(ref.device)
    got = ref.index_select(0, rows).float().cpu()
    rms = float(cpu_rows.pow(2).mean().sqrt())
    ok = (got - cpu_rows).abs() <= REFERENCE_ATOL_RMS * rms
    return int(ok.numel() - int(ok.sum()))


class ResultChecker:
    """Compare result matrices with the reference on their device, without host syncs."""

    def __init__(self, torch: Any, ref: Any, dtype: str = "bf16") -> None:
        self._torch = torch
        self.ref = ref.float()
        rms = float(self.ref.pow(2).mean().sqrt())
        self.rtol, self.atol = RTOL[dtype], ATOL_RMS[dtype] * rms
        # Allowed error per element, computed once: the check is then three passes.
        self._limit = self.ref.abs().mul_(self.rtol).add_(self.atol)
        self._diff = torch.empty_like(self.ref)
        self._ok = torch.empty(self.ref.shape, dtype=torch.bool, device=self.ref.device)
        self._bad = torch.zeros((), dtype=torch.int64, device=self.ref.device)
        self._max = torch.zeros((), dtype=torch.float32, device=self.ref.device)
        self.checks = 0

    @property
    def rule(self) -> str:
        """Describe the tolerance for the evidence."""
        return f"|result - fp32 reference| <= {self.rtol:g}*|ref| + {self.atol:.3g}"

    def check(self, c: Any) -> None:
        """Queue a comparison of ``c`` with the reference (counts stay on the device)."""
        t = self._torch
        t.sub(c, self.ref, out=self._diff)
        self._diff.abs_()
        # NaN fails <=, so a NaN result element counts as a mismatch.
        t.le(self._diff, self._limit, out=self._ok)
        self._bad.add_(self._ok.numel() - self._ok.sum())
        # maximum() propagates NaN, so a NaN anywhere shows as a NaN max error.
        t.maximum(self._max, self._diff.amax(), out=self._max)
        self.checks += 1

    def result(self) -> tuple[int, int, float]:
        """Return (checks, mismatched elements, max |error| or NaN); waits for queued checks."""
        return self.checks, int(self._bad.item()), float(self._max.item())
