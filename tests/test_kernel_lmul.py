"""The native ``lmul.LMul`` kernel against the numpy reference, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest

from lmul_onnx import numerics
from lmul_onnx.testing import SPECIAL_BITS, assert_same_bits, random_bits


@pytest.mark.parametrize("m", range(1, 24))
def test_lmul_float32_every_width(m: int, rng: np.random.Generator, run_op: Callable) -> None:
    a = random_bits(rng, 4000).view(np.float32)
    b = rng.permutation(random_bits(rng, 4000)).view(np.float32)
    # All pairs of specials too: the square of the special list.
    specials = np.array(SPECIAL_BITS, dtype=np.uint32).view(np.float32)
    a = np.concatenate([a, np.repeat(specials, len(specials))])
    b = np.concatenate([b, np.tile(specials, len(specials))])
    assert_same_bits(run_op("LMul", [a, b], mantissa_bits=m), numerics.lmul(a, b, mantissa_bits=m))


def test_lmul_default_width_is_the_type_width(rng: np.random.Generator, run_op: Callable) -> None:
    a = random_bits(rng, 3000).view(np.float32)
    b = random_bits(rng, 3000).view(np.float32)
    assert_same_bits(run_op("LMul", [a, b]), numerics.lmul(a, b, mantissa_bits=23))


@pytest.mark.parametrize(
    ("dtype", "widths"), [(np.float16, [1, 3, 4, 7, 10]), (ml_dtypes.bfloat16, [1, 2, 4, 7])]
)
def test_lmul_half_types(dtype: type, widths: list[int], rng: np.random.Generator, run_op: Callable) -> None:
    a = rng.integers(0, 2**16, size=20000, dtype=np.uint32).astype(np.uint16).view(dtype)
    b = rng.integers(0, 2**16, size=20000, dtype=np.uint32).astype(np.uint16).view(dtype)
    for m in widths:
        assert_same_bits(run_op("LMul", [a, b], mantissa_bits=m), numerics.lmul(a, b, mantissa_bits=m))
    assert_same_bits(run_op("LMul", [a, b]), numerics.lmul(a, b))


BROADCAST_CASES = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((3, 1), (1, 5)),
    ((2, 1, 4), (3, 1)),
    ((), (5,)),
    ((), ()),
    ((4, 1, 1), (1, 3, 2)),
    ((0, 3), (3,)),
    ((2, 3, 4, 5), (1, 3, 1, 5)),
    ((70000,), (1,)),  # spans several thread-pool tasks
]


@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCAST_CASES)
@pytest.mark.parametrize("threads", [1, 3])
def test_lmul_broadcasting(
    a_shape: tuple, b_shape: tuple, threads: int, rng: np.random.Generator, run_op: Callable
) -> None:
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    expected = numerics.lmul(a, b, mantissa_bits=3)
    assert_same_bits(run_op("LMul", [a, b], threads=threads, mantissa_bits=3), expected)
    assert_same_bits(
        run_op("LMul", [b, a], threads=threads, mantissa_bits=3), expected.reshape(expected.shape)
    )


@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCAST_CASES)
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_lmul_half_types_broadcasting(
    a_shape: tuple, b_shape: tuple, dtype: type, rng: np.random.Generator, run_op: Callable
) -> None:
    """16-bit operands go through float32 pieces (widened, multiplied, narrowed once):
    every broadcast run, runs longer than a piece, both orders, bit for bit."""
    a = np.asarray(rng.standard_normal(a_shape) * 300).astype(dtype)
    b = np.asarray(rng.standard_normal(b_shape) * 300).astype(dtype)  # products overflow float16
    for m in (None, 3):
        expected = numerics.lmul(a, b) if m is None else numerics.lmul(a, b, mantissa_bits=m)
        attrs = {} if m is None else {"mantissa_bits": m}
        assert_same_bits(run_op("LMul", [a, b], threads=3, **attrs), expected)
        assert_same_bits(run_op("LMul", [b, a], threads=3, **attrs), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize(("a_shape", "b_shape"), [((), ()), ((), (1,)), ((1,), ())])
def test_lmul_scalars_keep_their_rank(
    dtype: type, a_shape: tuple, b_shape: tuple, rng: np.random.Generator, run_op: Callable
) -> None:
    # Rank-0 operands give a rank-0 product in every type (bfloat16 travels as raw bits).
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    assert_same_bits(run_op("LMul", [a, b]), numerics.lmul(a, b))


@pytest.mark.parametrize("m", [1, 4, 7, 23])
@pytest.mark.parametrize("offset", [None, 0, (1 << 23) - 1])
def test_lmul_float32_one_add_pass(
    m: int, offset: int | None, rng: np.random.Generator, run_op: Callable
) -> None:
    # Data whose products are each one integer add take lmul_run_float32's first pass
    # (zeros and subnormals included); one infinity, an overflow or a value that saturates
    # when rounded sends its block (of 1024 elements) back to the full product.
    a = rng.standard_normal(70000).astype(np.float32)
    b = rng.standard_normal(70000).astype(np.float32)
    a[::7], a[3::11], b[5::13], b[6::17] = 0.0, -0.0, np.float32(1e-41), np.float32(-1e-41)
    cases = {"in range": (a, b)}
    for name, index, value in (("inf", 100, np.inf), ("overflow", 202, 3e38), ("nan", 66000, np.nan)):
        x = a.copy()
        x[index] = value
        cases[name] = (x, b * np.float32(1e10) if name == "overflow" else b)
    for x, y in cases.values():
        attrs = {"mantissa_bits": m} if offset is None else {"mantissa_bits": m, "offset": offset}
        expected = numerics.lmul(x, y, mantissa_bits=m, offset=offset)
        assert_same_bits(run_op("LMul", [x, y], **attrs), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_lmul_large_output_is_streamed(threads: int, rng: np.random.Generator, run_op: Callable) -> None:
    """Outputs of 8 MiB or more are written with streaming stores (lmul_elementwise): the
    same bits, with specials in some blocks, an odd length and on both threads."""
    n = (1 << 21) + 37
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    specials = np.array(SPECIAL_BITS, dtype=np.uint32).view(np.float32)
    a[5000 : 5000 + len(specials)] = specials
    b[n - len(specials) :] = specials
    a[::9], b[4::13] = 0.0, np.float32(-1e-41)
    assert_same_bits(run_op("LMul", [a, b], threads=threads), numerics.lmul(a, b))
    assert_same_bits(
        run_op("LMul", [a, b], threads=threads, mantissa_bits=4), numerics.lmul(a, b, mantissa_bits=4)
    )
