"""SPEC section 4, the ``offset`` attribute: the numpy reference, the kernels (every type,
width and matmul variant, bit for bit), the unbiased table and its derivation, the
calibration function, and the values the kernels refuse."""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import lmul_onnx
from lmul_onnx import numerics, offsets
from lmul_onnx.reference import reference_evaluator
from lmul_onnx.testing import MATMUL_VARIANTS, matmul_variant, single_op_model
from tests.test_kernel_lmul import assert_same_bits, random_bits

# SPEC section 4's worked values: (a, b, m, offset, expected bits).
WORKED = [
    (0x3FC00000, 0x3FC00000, 23, 0, 0x40000000),
    (0x3FC00000, 0x3FC00000, 23, 0x100000, 0x40100000),
    (0x3F8CCCCD, 0x3F8CCCCD, 4, 0x80000, 0x3FA80000),
    (0x40400000, 0xC0000000, 23, 0x7FFFFF, 0xC13FFFFF),
]
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


def bits_of(value: int) -> np.ndarray:
    return np.array([value], dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize(("a", "b", "m", "offset", "expected"), WORKED)
def test_spec_worked_values_numpy(a: int, b: int, m: int, offset: int, expected: int) -> None:
    result = numerics.lmul(bits_of(a), bits_of(b), mantissa_bits=m, offset=offset)
    assert result.view(np.uint32)[0] == expected


@pytest.mark.parametrize(("a", "b", "m", "offset", "expected"), WORKED)
def test_spec_worked_values_kernel(
    a: int, b: int, m: int, offset: int, expected: int, run_op: Callable
) -> None:
    result = run_op("LMul", [bits_of(a), bits_of(b)], mantissa_bits=m, offset=offset)
    assert result.view(np.uint32)[0] == expected


def test_absent_offset_is_the_papers() -> None:
    assert [numerics.paper_offset(m) for m in (1, 2, 3, 4, 5, 23)] == [
        1 << 22,
        1 << 21,
        1 << 20,
        1 << 20,
        1 << 19,
        1 << 19,
    ]
    x = random_bits(np.random.default_rng(3), 2000).view(np.float32)
    for m in (3, 4, 23):
        assert_same_bits(
            numerics.lmul(x, x[::-1], mantissa_bits=m),
            numerics.lmul(x, x[::-1], mantissa_bits=m, offset=numerics.paper_offset(m)),
        )


@pytest.mark.parametrize("bad", [-1, 1 << 23, 2**40])
def test_numpy_refuses_out_of_range_offsets(bad: int) -> None:
    with pytest.raises(ValueError, match="offset"):
        numerics.lmul(np.float32([1]), np.float32([1]), offset=bad)


@pytest.mark.parametrize("bad", [0.5, "1", True])
def test_numpy_refuses_non_integer_offsets(bad: object) -> None:
    with pytest.raises(TypeError, match="offset"):
        numerics.lmul_matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), offset=bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernel_lmul_random_offsets(dtype: type, rng: np.random.Generator, run_op: Callable) -> None:
    type_bits = numerics.mantissa_bits_of(dtype)
    for m in sorted({1, 3, 4, type_bits // 2, type_bits}):
        offset = int(rng.integers(0, 1 << 23))
        with np.errstate(over="ignore", invalid="ignore"):  # wide values become inf in half types
            a = random_bits(rng, 1500).view(np.float32).astype(dtype)
            b = random_bits(rng, 1500).view(np.float32).astype(dtype)
        expected = numerics.lmul(a, b, mantissa_bits=m, offset=offset)
        assert_same_bits(run_op("LMul", [a, b], mantissa_bits=m, offset=offset), expected)
        # broadcasting paths (scalar operands) take the other loops
        assert_same_bits(
            run_op("LMul", [a, b[:1]], mantissa_bits=m, offset=offset),
            numerics.lmul(a, b[:1], mantissa_bits=m, offset=offset),
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["LMulMatMul", "LMulGemm"])
def test_kernel_products_random_offsets(
    dtype: type, op: str, rng: np.random.Generator, run_op: Callable
) -> None:
    """Sums in float32 in a fixed order: the kernel's float32 result equals the reference
    rounded from float64 up to the summation tolerance of SPEC 3; the products themselves
    are checked bit for bit through K = 1."""
    type_bits = numerics.mantissa_bits_of(dtype)
    for m in (3, 4, type_bits):
        offset = int(rng.integers(0, 1 << 23))
        for k in (1, 37):
            a = rng.standard_normal((9, k)).astype(np.float32).astype(dtype)
            b = rng.standard_normal((k, 70)).astype(np.float32).astype(dtype)
            if op == "LMulMatMul":
                got = run_op(op, [a, b], mantissa_bits=m, offset=offset)
                exact = numerics.lmul_matmul(a, b, mantissa_bits=m, offset=offset, accumulate=np.float64)
            else:
                c = rng.standard_normal(70).astype(np.float32).astype(dtype)
                got = run_op(op, [a, b.T.copy(), c], mantissa_bits=m, offset=offset, transB=1, alpha=0.5)
                exact = numerics.lmul_gemm(
                    a, b.T, c, trans_b=True, alpha=0.5, mantissa_bits=m, offset=offset, accumulate=np.float64
                )
            if k == 1 and op == "LMulMatMul":
                assert_same_bits(got, numerics.lmul_matmul(a, b, mantissa_bits=m, offset=offset))
            products = numerics.lmul_matmul(np.abs(a), np.abs(b), mantissa_bits=m, offset=offset).astype(
                np.float64
            )
            tolerance = k * 2.0**-23 * products + np.abs(exact) * 2.0 ** -(type_bits + 1) + 1e-30
            assert np.all(np.abs(got.astype(np.float64) - exact) <= tolerance * 2), (m, offset, k)


@pytest.fixture(scope="module")
def choose() -> Callable[..., int]:
    return matmul_variant


def variant_cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Data that selects each matmul variant (tests/test_kernel_variants.py)."""
    a = rng.standard_normal((37, 70)).astype(np.float32)
    b = rng.standard_normal((70, 133)).astype(np.float32)
    return {
        "add": (a, b),
        "add-masked-a": (np.maximum(a, 0), b),
        "add-masked-b": (a, np.where(np.abs(b) < 0.3, 0, b).astype(np.float32)),
        "add-masked-ab": (
            np.maximum(a, 0),
            np.where(np.abs(b) < 0.3, np.float32(1e-41), b).astype(np.float32),
        ),
        "clamped-low": (
            (a * np.float32(1e-20)).astype(np.float32),
            (b * np.float32(1e-20)).astype(np.float32),
        ),
        "clamped-masked-b": (
            (np.maximum(a, 0) * np.exp(rng.uniform(-45, 45, a.shape))).astype(np.float32),
            np.where(np.abs(b) < 0.3, 0, b * np.exp(rng.uniform(-45, 45, b.shape))).astype(np.float32),
        ),
        "general": (np.where(a > 2, np.inf, a).astype(np.float32), b),
    }


@pytest.mark.parametrize(
    "case",
    ["add", "add-masked-a", "add-masked-b", "add-masked-ab", "clamped-low", "clamped-masked-b", "general"],
)
@pytest.mark.parametrize("constant_b", [False, True])
def test_every_matmul_variant_with_offsets(
    case: str, constant_b: bool, rng: np.random.Generator, choose: Callable
) -> None:
    """Each variant the pre-scan picks, with random offsets (0 and 2^23 - 1 included),
    equals the portable loop run through the same path with SIMD (the float32 sums of
    all variants are bit-identical, see test_kernel_variants) and the reference within
    the summation tolerance; the variant picked is the one the data is meant to select."""
    a, b = variant_cases(rng)[case]
    for offset in (0, (1 << 23) - 1, int(rng.integers(0, 1 << 23))):
        for m in (4, 23):
            picked = MATMUL_VARIANTS[choose(a, b, m, offset)]
            if choose(np.ones(4, np.float32), np.ones(4, np.float32), 23, -1) == 1:  # SIMD present
                assert picked == case, (picked, m, offset)
            model = single_op_model("LMulMatMul", [np.float32, np.float32], mantissa_bits=m, offset=offset)
            if constant_b:
                model.graph.input.pop()
                model.graph.initializer.append(helper.make_tensor("in1", 1, b.shape, b.ravel()))
            session = lmul_onnx.InferenceSession(model.SerializeToString())
            feeds = {"in0": a} if constant_b else {"in0": a, "in1": b}
            got = session.run(None, feeds)[0]
            with np.errstate(invalid="ignore"):  # inf - inf in the "general" case
                exact = numerics.lmul_matmul(a, b, mantissa_bits=m, offset=offset, accumulate=np.float64)
            magnitude = numerics.lmul_matmul(np.abs(a), np.abs(b), mantissa_bits=m, offset=offset).astype(
                np.float64
            )
            finite = np.isfinite(exact) & np.isfinite(magnitude)
            with np.errstate(invalid="ignore", over="ignore"):  # float64 sums beyond float32
                assert np.array_equal(np.isnan(got), np.isnan(exact.astype(np.float32)))
            close = np.abs(got[finite] - exact[finite]) <= 2 * 70 * 2.0**-23 * magnitude[finite] + 1e-37
            assert close.all(), (case, m, offset)


def test_variant_choice_depends_on_the_offset(choose: Callable, run_op: Callable) -> None:
    """2^-63 x 1.5 * 2^-64: |a| + |b| - 0x3F800000 = 0x400000, so the product underflows
    exactly when offset < 0x400000. The pre-scan must use the node's offset: the paper's
    (0x80000) and 0 may underflow (the clamped kernel with the underflow check; without
    SIMD the checked "normal" loop), 2^23 - 1 cannot (one add)."""
    a = np.full((4, 8), 2.0**-63, np.float32)
    b = np.full((8, 3), 1.5 * 2.0**-64, np.float32)
    simd = choose(np.ones(4, np.float32), np.ones(4, np.float32), 23, -1) == 1
    assert choose(a, b, 23, -1) == choose(a, b, 23, 0) == (10 if simd else 5)
    assert choose(a, b, 23, (1 << 23) - 1) == (1 if simd else 5)
    assert choose(a, b, 23, 1 << 23) == -1 and choose(a, b, 23, -2) == -1
    for offset in (0, 0x3FFFFF, 0x400000, (1 << 23) - 1):
        assert_same_bits(
            run_op("LMulMatMul", [a, b], offset=offset), numerics.lmul_matmul(a, b, offset=offset)
        )


def test_reference_evaluator_uses_the_offset(rng: np.random.Generator, run_op: Callable) -> None:
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    model = single_op_model("LMulMatMul", [np.float32, np.float32], mantissa_bits=4, offset=123457)
    (expected,) = reference_evaluator(model).run(None, {"in0": a, "in1": b})
    assert np.array_equal(expected, numerics.lmul_matmul(a, b, mantissa_bits=4, offset=123457))
    assert np.allclose(run_op("LMulMatMul", [a, b], mantissa_bits=4, offset=123457), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must be in 0..8388607"),
        (1 << 23, "must be in 0..8388607"),
        (0.0625, "must be an int, got a float"),
        ("16", "must be an int, got a string"),
        ([16], "must be an int, got a list of ints"),
    ],
    ids=["negative", "2^23", "float", "string", "ints"],
)
def test_kernel_refuses_bad_offsets_at_session_creation(value: object, message: str) -> None:
    """Plain onnxruntime (no Python-side check): the kernel itself refuses the value."""
    model = single_op_model("LMul", [np.float32, np.float32], node_name="bad_node", offset=value)
    options = ort.SessionOptions()
    options.register_custom_ops_library(lmul_onnx.get_library_path())
    options.log_severity_level = 4
    with pytest.raises(Exception, match=message) as error:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert "bad_node" in str(error.value)


# ---- the unbiased table and the calibration function ----


def test_unbiased_table_regenerates() -> None:
    assert offsets.derive_unbiased_offsets() == offsets.UNBIASED_OFFSETS


def test_unbiased_offsets_zero_the_measured_bias() -> None:
    """Monte-Carlo check of the (quadrature) derivation on seeded N(0, 1) pairs."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal(400_000).astype(np.float32)
    b = rng.standard_normal(400_000).astype(np.float32)
    exact = a.astype(np.float64) * b
    for m in (3, 4, 23):
        paper = numerics.lmul(a, b, mantissa_bits=m).astype(np.float64) / exact - 1
        unbiased = numerics.lmul(a, b, mantissa_bits=m, offset=offsets.UNBIASED_OFFSETS[m]) / exact - 1
        assert abs(np.mean(unbiased)) < 0.001 < np.mean(paper)
        assert np.mean(np.abs(unbiased)) < np.mean(np.abs(paper))


def test_zero_bias_offset_from_samples() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal(20_000).astype(np.float32)
    b = rng.standard_normal(30_000).astype(np.float32)
    offset = offsets.zero_bias_offset(a, b, 4)
    assert offset == offsets.zero_bias_offset(a.copy(), b.copy(), 4)  # deterministic
    assert abs(offset - offsets.UNBIASED_OFFSETS[4]) < 0.002 * (1 << 23)  # N(0,1) samples: the table's
    assert abs(offsets.mean_relative_error(a, b, 4, offset)) < 1e-6
    # the modelled mean error is the measured one over all pairs (every a meets every b)
    pairs_a, pairs_b = np.meshgrid(a[:300], b[:300])
    exact = pairs_a.astype(np.float64) * pairs_b
    measured = np.mean(numerics.lmul(pairs_a, pairs_b, mantissa_bits=4, offset=offset) / exact - 1)
    assert measured == pytest.approx(offsets.mean_relative_error(a[:300], b[:300], 4, offset), abs=1e-9)
    # other data, other offsets: mantissas near 0 make xm * ym, the dropped term, small
    small = rng.uniform(1, 1.1, 20_000).astype(np.float32)
    assert offsets.zero_bias_offset(small, small, 7) < 0.01 * (1 << 23) < offset
    with pytest.raises(ValueError, match="no non-zero"):
        offsets.zero_bias_offset(np.zeros(4, np.float32), b, 4)
