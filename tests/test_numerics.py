"""The numpy reference against SPEC.md's worked values and its own invariants."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lmul_onnx import numerics

# SPEC.md section 1, "Worked values": (a bits, b bits, m, expected bits; None = NaN).
SPEC_WORKED_VALUES = [
    (0x3FC00000, 0x3FC00000, 23, 0x40080000),
    (0x40400000, 0xC0000000, 23, 0xC0C80000),
    (0x3DCCCCCD, 0x3E4CCCCD, 23, 0x3CA1999A),
    (0x3F8CCCCD, 0x3F8CCCCD, 3, 0x3FB00000),
    (0x3F8CCCCD, 0x3F8CCCCD, 4, 0x3FB00000),
    (0xC0E00000, 0x3E99999A, 7, 0xC0020000),
    (0x00000000, 0xC0A00000, 23, 0x80000000),
    (0x0DA24260, 0x1E3CE508, 23, 0x00000000),
    (0x7F61B1E6, 0x40000000, 23, 0x7F800000),
    (0x7F800000, 0x00000000, 23, None),
    (0x7F800000, 0xBF000000, 23, 0xFF800000),
    (0x3F800001, 0x3F800000, 1, 0x3FC00000),
    (0x00000000, 0xFF7FFFFF, 4, 0x80000000),
    (0x7F7FFFFF, 0x3F000000, 4, 0x7F080000),
    (0xFF7FFFFF, 0x3F800000, 4, 0xFF800000),
]


def f32(bits: int | list[int]) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize(("a", "b", "m", "expected"), SPEC_WORKED_VALUES)
def test_spec_worked_values(a: int, b: int, m: int, expected: int | None) -> None:
    result = numerics.lmul(f32([a]), f32([b]), mantissa_bits=m)
    if expected is None:
        assert np.isnan(result[0])
    else:
        assert result.view(np.uint32)[0] == expected
    # L-Mul is commutative: both operands are rounded alike and added.
    swapped = numerics.lmul(f32([b]), f32([a]), mantissa_bits=m)
    assert np.array_equal(result.view(np.uint32), swapped.view(np.uint32)) or expected is None


def test_offset_exponent_rule() -> None:
    assert [numerics.offset_exponent_bits(m) for m in range(1, 8)] == [1, 2, 3, 3, 4, 4, 4]
    assert numerics.offset_exponent_bits(23) == 4
    with pytest.raises(ValueError):
        numerics.offset_exponent_bits(0)


@pytest.mark.parametrize("m", range(1, 24))
def test_round_mantissa_matches_float_rounding(m: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal(20000).astype(np.float32) * np.float32(1e3)
    rounded = numerics.round_mantissa(x, m)
    drop = 23 - m
    # Low bits are cleared, and the result is the nearest m-bit value (ties to even).
    assert not np.any(rounded.view(np.uint32) & np.uint32((1 << drop) - 1))
    ulp = np.ldexp(1.0, np.frexp(np.abs(x).astype(np.float64))[1] - 1 - m)
    assert np.all(np.abs(rounded.astype(np.float64) - x) <= ulp / 2 + 1e-300)


def test_round_mantissa_saturates_and_keeps_specials() -> None:
    x = f32([0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0x7FC00001, 0x00000001, 0x007FFFFF])
    r = numerics.round_mantissa(x, 4).view(np.uint32)
    assert list(r[:3]) == [0x7F780000, 0xFF780000, 0x7F800000]
    assert np.isnan(r[3:4].view(np.float32)[0])
    assert r[4] == 0  # tiny subnormal rounds to zero
    assert r[5] == 0x00800000  # largest subnormal rounds up to the smallest normal


def test_mantissa_bits_validation() -> None:
    a = np.ones(3, np.float16)
    with pytest.raises(ValueError, match=r"1\.\.10"):
        numerics.lmul(a, a, mantissa_bits=11)
    with pytest.raises(TypeError):
        numerics.lmul(a, a.astype(np.float32))
    with pytest.raises(TypeError):
        numerics.lmul(np.ones(2, np.int32), np.ones(2, np.int32))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_types_round_the_float32_product_once(dtype: type, rng: np.random.Generator) -> None:
    a = rng.standard_normal(5000).astype(dtype)
    b = rng.standard_normal(5000).astype(dtype)
    m = numerics.mantissa_bits_of(dtype)
    expected = numerics.lmul(a.astype(np.float32), b.astype(np.float32), mantissa_bits=m).astype(dtype)
    result = numerics.lmul(a, b)
    assert result.dtype == np.dtype(dtype)
    assert np.array_equal(result.view(np.uint16), expected.view(np.uint16))


def test_lmul_at_23_bits_is_close_to_multiplication(rng: np.random.Generator) -> None:
    a = rng.standard_normal(100000).astype(np.float32)
    b = rng.standard_normal(100000).astype(np.float32)
    exact = a.astype(np.float64) * b
    rel = np.abs(numerics.lmul(a, b) - exact) / np.abs(exact)
    # The dropped xm*ym term costs at most about 1/9 relative (paper, section 3.1).
    assert rel.max() < 0.125
    assert 0.01 < rel.mean() < 0.06


def test_matmul_matches_sum_of_elementwise_products(rng: np.random.Generator) -> None:
    a = rng.standard_normal((2, 3, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    y = numerics.lmul_matmul(a, b, mantissa_bits=5, accumulate=np.float64)
    products = numerics.lmul(a[..., :, :, None], b[None, None, :, :], mantissa_bits=5)
    assert np.allclose(y, products.astype(np.float64).sum(axis=-2), rtol=0, atol=1e-12)
    assert numerics.lmul_matmul(a[0, 0], b).shape == (4,)
    assert numerics.lmul_matmul(a, b[:, 0]).shape == (2, 3)


def test_gemm_reference(rng: np.random.Generator) -> None:
    a = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    c = rng.standard_normal((4,)).astype(np.float32)
    y = numerics.lmul_gemm(a, b, c, alpha=0.5, beta=2.0, trans_a=True, trans_b=True)
    s = numerics.lmul_matmul(a.T, b.T).astype(np.float32)
    assert np.allclose(y, np.float32(0.5) * s + np.float32(2.0) * c, rtol=1e-6, atol=1e-6)
