"""``lmul.LMulMatMul`` and ``lmul.LMulGemm`` against float64 sums of exact L-Mul products.

SPEC section 3: sums may be taken in any order at float32 or better, so results are
compared with a tolerance proportional to K * 2^-23 * sum(|products|).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import ml_dtypes
import numpy as np
import pytest

from lmul_onnx import numerics
from lmul_onnx.testing import assert_close_to_reference, sum_tolerance

MATMUL_SHAPES = [
    ((4, 5), (5, 3)),
    ((1, 7), (7, 1)),
    ((5,), (5, 3)),  # 1-D A
    ((4, 5), (5,)),  # 1-D B
    ((6,), (6,)),  # vector dot product -> scalar
    ((2, 3, 4, 5), (5, 6)),  # batched A, shared B
    ((5, 6), (2, 6, 3)),  # shared A, batched B
    ((2, 1, 4, 5), (3, 5, 2)),  # batch broadcasting both ways
    ((3, 4, 0), (0, 2)),  # K = 0: sums of nothing
    ((0, 4), (4, 3)),  # M = 0
    ((12, 64, 32), (12, 32, 64)),  # attention-like, many tasks
    ((300, 40), (40, 70)),  # several row blocks
]


@pytest.mark.parametrize(("a_shape", "b_shape"), MATMUL_SHAPES)
@pytest.mark.parametrize("m", [None, 4])
def test_matmul_shapes(
    a_shape: tuple, b_shape: tuple, m: int | None, rng: np.random.Generator, run_op: Callable
) -> None:
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    attrs = {} if m is None else {"mantissa_bits": m}
    one = run_op("LMulMatMul", [a, b], threads=1, **attrs)
    several = run_op("LMulMatMul", [a, b], threads=4, **attrs)
    expected = numerics.lmul_matmul(a, b, mantissa_bits=m, accumulate=np.float64)
    assert one.shape == np.matmul(a, b).shape
    assert_close_to_reference(one, expected, sum_tolerance(a, b, m, a_shape[-1]))
    # Each output element is summed the same way whatever the thread count.
    assert np.array_equal(one, several)


def test_matmul_is_not_plain_multiplication(rng: np.random.Generator, run_op: Callable) -> None:
    a = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    result = run_op("LMulMatMul", [a, b])
    assert not np.allclose(result, a @ b, rtol=1e-4, atol=1e-4)


def test_matmul_special_values(run_op: Callable) -> None:
    a = np.array([[np.inf, 1.0], [0.0, 2.0], [np.nan, 1.0], [1e30, 1e30]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    result = run_op("LMulMatMul", [a, b])
    expected = numerics.lmul_matmul(a, b)
    assert np.array_equal(np.isnan(result), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(result[finite], expected[finite])


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("m", [None, 3])
def test_matmul_half_types(dtype: type, m: int | None, rng: np.random.Generator, run_op: Callable) -> None:
    a = rng.standard_normal((3, 17, 24)).astype(dtype)
    b = rng.standard_normal((24, 9)).astype(dtype)
    attrs = {} if m is None else {"mantissa_bits": m}
    result = run_op("LMulMatMul", [a, b], **attrs)
    assert result.dtype == np.dtype(dtype)
    expected = numerics.lmul_matmul(a, b, mantissa_bits=m, accumulate=np.float64)
    assert_close_to_reference(result, expected, sum_tolerance(a, b, m, 24))


GEMM_CASES = [
    # (A shape, B shape, C shape or None, transA, transB)
    ((4, 5), (5, 3), None, 0, 0),
    ((5, 4), (5, 3), (3,), 1, 0),
    ((4, 5), (3, 5), (4, 1), 0, 1),
    ((5, 4), (3, 5), (4, 3), 1, 1),
    ((4, 5), (5, 3), (), 0, 0),
    ((4, 5), (5, 3), (1, 3), 0, 0),
    ((1, 8), (8, 6), (6,), 0, 0),
    ((200, 30), (30, 50), (50,), 0, 0),
]


@pytest.mark.parametrize(("a_shape", "b_shape", "c_shape", "trans_a", "trans_b"), GEMM_CASES)
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, -2.0)])
def test_gemm(
    a_shape: tuple,
    b_shape: tuple,
    c_shape: tuple | None,
    trans_a: int,
    trans_b: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    run_op: Callable,
) -> None:
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    c = None if c_shape is None else rng.standard_normal(c_shape).astype(np.float32)
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta, "mantissa_bits": 5}
    one = run_op("LMulGemm", [a, b, c], threads=1, **attrs)
    several = run_op("LMulGemm", [a, b, c], threads=3, **attrs)
    expected = numerics.lmul_gemm(
        a,
        b,
        c,
        alpha=alpha,
        beta=beta,
        trans_a=bool(trans_a),
        trans_b=bool(trans_b),
        mantissa_bits=5,
        accumulate=np.float64,
    )
    a2, b2 = (a.T if trans_a else a), (b.T if trans_b else b)
    tolerance = abs(alpha) * sum_tolerance(a2, b2, 5, a2.shape[1])
    if c is not None:  # the float32 scalings and the addition round too
        tolerance = tolerance + 2.0**-22 * (
            np.abs(alpha * expected) + np.abs(beta * np.broadcast_to(c, expected.shape))
        )
    assert_close_to_reference(one, expected, tolerance)
    assert np.array_equal(one, several)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_gemm_half_types(dtype: type, rng: np.random.Generator, run_op: Callable) -> None:
    a = rng.standard_normal((6, 10)).astype(dtype)
    b = rng.standard_normal((7, 10)).astype(dtype)
    c = rng.standard_normal((7,)).astype(dtype)
    result = run_op("LMulGemm", [a, b, c], transB=1, alpha=1.5, beta=0.25)
    assert result.dtype == np.dtype(dtype)
    expected = numerics.lmul_gemm(a, b, c, alpha=1.5, beta=0.25, trans_b=True, accumulate=np.float64)
    tolerance = 1.5 * sum_tolerance(a, b.T, None, 10) + 2.0**-22 * np.abs(expected) + 2.0**-22
    assert_close_to_reference(result, expected, tolerance)


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
def test_small_m_special_values(rows: int, rng: np.random.Generator, run_op: Callable) -> None:
    # Few rows against a per-call B take the small-M kernel (no packing); with K = 2 the
    # float32 sum is the correctly rounded sum, so the reference matches bit for bit.
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-41, 3e38, 1e-30, 1.5, -2.0], np.float32)
    b = rng.choice(values, (2, 37)).astype(np.float32)
    b[:, :20] = rng.standard_normal((2, 20))  # some columns with a one-add-exact B
    for a, m in product((rng.choice(values, (rows, 2)), rng.standard_normal((rows, 2))), (None, 4)):
        a = a.astype(np.float32)
        attrs = {} if m is None else {"mantissa_bits": m}
        result = run_op("LMulMatMul", [a, b], **attrs)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the reference's sums
            expected = numerics.lmul_matmul(a, b, mantissa_bits=m)
        assert np.array_equal(np.isnan(result), np.isnan(expected))
        finite = ~np.isnan(expected)
        assert np.array_equal(result[finite].view(np.uint32), expected[finite].view(np.uint32))
