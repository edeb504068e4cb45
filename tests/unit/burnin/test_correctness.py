"""The result check and reference on CPU tensors (the same code runs on the GPU)."""

import math

import pytest
import torch

from sentinel.burnin import correctness

N = 256


@pytest.fixture(scope="module")
def inputs():
    return correctness.make_inputs(torch, N, seed=7)


def test_inputs_are_fixed_by_seed(inputs):
    a2, b2 = correctness.make_inputs(torch, N, seed=7)
    assert torch.equal(inputs[0], a2) and torch.equal(inputs[1], b2)
    a3, _ = correctness.make_inputs(torch, N, seed=8)
    assert not torch.equal(inputs[0], a3)


def test_a_correct_bf16_product_passes(inputs):
    a, b = inputs
    ref = a.float() @ b.float()
    checker = correctness.ResultChecker(torch, ref, "bf16")
    c = torch.empty(N, N, dtype=torch.bfloat16)
    torch.matmul(a, b, out=c)
    for _ in range(3):
        checker.check(c)
    checks, bad, max_err = checker.result()
    assert (checks, bad) == (3, 0)
    assert 0 < max_err < checker.atol + checker.rtol * float(ref.abs().max())


def test_corrupted_elements_are_counted_with_the_max_error(inputs):
    a, b = inputs
    ref = a.float() @ b.float()
    checker = correctness.ResultChecker(torch, ref, "bf16")
    c = (a @ b).clone()
    c[3, 4] = c[3, 4] + 100.0  # a flipped high bit
    c[100, 7] = -c[100, 7] * 8
    checker.check(c)
    checks, bad, max_err = checker.result()
    assert (checks, bad) == (1, 2)
    assert max_err >= 100.0


def test_nan_counts_as_a_mismatch(inputs):
    a, b = inputs
    checker = correctness.ResultChecker(torch, a.float() @ b.float(), "bf16")
    c = (a @ b).clone()
    c[0, 0] = float("nan")
    checker.check(c)
    _, bad, max_err = checker.result()
    assert bad == 1 and math.isnan(max_err)


def test_stale_result_is_caught(inputs):
    a, b = inputs
    checker = correctness.ResultChecker(torch, a.float() @ b.float(), "bf16")
    c = (a @ b).clone()
    c[:16] = 0  # a tile the GPU never wrote
    checker.check(c)
    assert checker.result()[1] > 16 * N * 0.9


def test_reference_rows_against_the_cpu(inputs):
    a, b = inputs
    rows = correctness.cpu_reference_rows(torch, a, b, "bf16")
    ref = a.float() @ b.float()
    assert correctness.count_reference_mismatches(torch, ref, rows) == 0
    idx = correctness.reference_row_indices(torch, N)
    ref[idx[2], 9] += 1.0  # a broken fp32 path on the GPU
    assert correctness.count_reference_mismatches(torch, ref, rows) == 1


def test_fp8_inputs_quantize_and_pass(inputs):
    a, b = inputs
    qa, qb = correctness.quantize(torch, a, "fp8"), correctness.quantize(torch, b, "fp8")
    assert qa.dtype == torch.float8_e4m3fn
    checker = correctness.ResultChecker(torch, qa.float() @ qb.float(), "fp8")
    checker.check((qa.float() @ qb.float()).to(torch.bfloat16))
    assert checker.result()[1] == 0
