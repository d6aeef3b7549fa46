"""The L-Mul arithmetic in numpy: the executable form of ``docs/SPEC.md``.

This module is the oracle every other implementation is checked against (the C++
kernels, the portable ONNX reference). It is vectorised but written for clarity:
each function mirrors one paragraph of the specification.

Public functions:

* :func:`lmul` -- element-wise L-Mul with numpy broadcasting (SPEC section 1 and 2).
* :func:`lmul_matmul` -- ``numpy.matmul`` with every product an L-Mul (SPEC section 3).
* :func:`lmul_gemm` -- ONNX ``Gemm`` semantics on top of :func:`lmul_matmul`.
* :func:`round_mantissa` -- the saturating operand rounding of SPEC section 1, step 1.
* :func:`offset_exponent_bits` -- ``l(m)`` of the paper.
* :func:`paper_offset` -- the paper's additive constant ``1 << (23 - l(m))`` (SPEC section 4:
  the default of the optional ``offset`` attribute).

Every function takes an optional ``offset`` (SPEC section 4): the integer added to the
sum of the operands' bit patterns in place of the paper's constant, 0 <= offset < 2^23;
``None`` is the paper's.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FLOAT32_MANTISSA_BITS",
    "OFFSET_LIMIT",
    "check_offset",
    "lmul",
    "lmul_gemm",
    "lmul_matmul",
    "mantissa_bits_of",
    "offset_exponent_bits",
    "paper_offset",
    "round_mantissa",
]

FLOAT32_MANTISSA_BITS = 23
_SIGN = np.uint32(0x80000000)
_MAGNITUDE = np.uint32(0x7FFFFFFF)
_INF_BITS = 0x7F800000
_NAN_BITS = np.uint32(0x7FC00000)
_ONE_BITS = 0x3F800000
_SMALLEST_NORMAL_BITS = 0x00800000
OFFSET_LIMIT = 1 << FLOAT32_MANTISSA_BITS  # SPEC 4: 0 <= offset < 2^23

try:  # ml_dtypes ships with onnx; bfloat16 arrays are only recognised when it is present.
    import ml_dtypes

    _BFLOAT16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - onnx depends on ml_dtypes
    _BFLOAT16 = None


def offset_exponent_bits(mantissa_bits: int) -> int:
    """Return ``l(m)``: the exponent of the constant ``2^-l(m)`` that replaces ``xm*ym``."""
    _check_mantissa_bits(mantissa_bits, FLOAT32_MANTISSA_BITS)
    if mantissa_bits <= 3:
        return mantissa_bits
    if mantissa_bits == 4:
        return 3
    return 4


def paper_offset(mantissa_bits: int) -> int:
    """The paper's additive constant ``1 << (23 - l(m))``: the ``offset`` when none is given."""
    return 1 << (FLOAT32_MANTISSA_BITS - offset_exponent_bits(mantissa_bits))


def check_offset(offset: int) -> int:
    """Return ``offset`` as an int when it is a valid SPEC section 4 offset, else raise."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    if not 0 <= offset < OFFSET_LIMIT:
        raise ValueError(f"offset must be in 0..{OFFSET_LIMIT - 1} (0 <= offset < 2^23), got {offset}")
    return int(offset)


def mantissa_bits_of(dtype: np.dtype | type) -> int:
    """Return the mantissa width of a supported floating dtype (float32, float16, bfloat16)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return 23
    if dtype == np.float16:
        return 10
    if _BFLOAT16 is not None and dtype == _BFLOAT16:
        return 7
    raise TypeError(f"L-Mul supports float32, float16 and bfloat16 tensors, not {dtype}")


def _check_mantissa_bits(mantissa_bits: int, type_bits: int) -> None:
    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, (int, np.integer)):
        raise TypeError(f"mantissa_bits must be an int, not {type(mantissa_bits).__name__}")
    if not 1 <= mantissa_bits <= type_bits:
        raise ValueError(f"mantissa_bits must be in 1..{type_bits}, got {mantissa_bits}")


def round_mantissa(x: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """Round float32 values to ``mantissa_bits`` mantissa bits (SPEC section 1, step 1).

    Round-to-nearest-even on the bit pattern, saturating: a finite value never becomes
    infinite. NaN and infinity pass through unchanged.
    """
    _check_mantissa_bits(mantissa_bits, FLOAT32_MANTISSA_BITS)
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    if mantissa_bits == FLOAT32_MANTISSA_BITS:
        return bits.view(np.float32).copy()
    drop = FLOAT32_MANTISSA_BITS - mantissa_bits
    magnitude = (bits & _MAGNITUDE).astype(np.uint64)
    lsb = (magnitude >> drop) & 1
    rounded = ((magnitude + (1 << (drop - 1)) - 1 + lsb) >> drop) << drop
    largest_finite = (0x7F7FFFFF >> drop) << drop
    rounded = np.minimum(rounded, largest_finite)
    non_finite = magnitude >= _INF_BITS
    rounded = np.where(non_finite, magnitude, rounded).astype(np.uint32)
    return (rounded | (bits & _SIGN)).view(np.float32)


def _lmul_float32(a: np.ndarray, b: np.ndarray, mantissa_bits: int, offset: int) -> np.ndarray:
    """SPEC sections 1 and 4 on float32 arrays (broadcast together); returns float32."""
    a_bits = round_mantissa(a, mantissa_bits).view(np.uint32)
    b_bits = round_mantissa(b, mantissa_bits).view(np.uint32)
    a_mag = (a_bits & _MAGNITUDE).astype(np.int64)
    b_mag = (b_bits & _MAGNITUDE).astype(np.int64)
    sign = (a_bits ^ b_bits) & _SIGN

    r = a_mag + b_mag - _ONE_BITS + offset
    result = np.where(r < _SMALLEST_NORMAL_BITS, 0, r)
    result = np.where(r >= _INF_BITS, _INF_BITS, result)

    # Special operands, applied from the lowest to the highest priority of SPEC step 2.
    a_zero = a_mag < _SMALLEST_NORMAL_BITS
    b_zero = b_mag < _SMALLEST_NORMAL_BITS
    a_inf = a_mag == _INF_BITS
    b_inf = b_mag == _INF_BITS
    any_zero = a_zero | b_zero
    result = np.where(any_zero, 0, result)
    result = np.where(a_inf | b_inf, _INF_BITS, result)
    result = result.astype(np.uint32) | sign
    nan = (a_mag > _INF_BITS) | (b_mag > _INF_BITS) | ((a_inf | b_inf) & any_zero)
    result = np.where(nan, _NAN_BITS, result)
    return result.view(np.float32)


def _to_float32(x: np.ndarray) -> np.ndarray:
    """Exact conversion of a float32/float16/bfloat16 array to float32."""
    return np.asarray(x).astype(np.float32)


def _resolve(
    a: np.ndarray, b: np.ndarray, mantissa_bits: int | None, offset: int | None
) -> tuple[np.dtype, int, int]:
    """Common checks: both operands of one supported type; default/validate ``m`` and ``offset``."""
    if a.dtype != b.dtype:
        raise TypeError(f"operands must have the same dtype, got {a.dtype} and {b.dtype}")
    type_bits = mantissa_bits_of(a.dtype)
    if mantissa_bits is None:
        mantissa_bits = type_bits
    _check_mantissa_bits(mantissa_bits, type_bits)
    offset = paper_offset(mantissa_bits) if offset is None else check_offset(offset)
    return a.dtype, int(mantissa_bits), offset


def lmul(
    a: np.ndarray, b: np.ndarray, mantissa_bits: int | None = None, *, offset: int | None = None
) -> np.ndarray:
    """Element-wise L-Mul of two arrays with numpy broadcasting (the ``lmul.LMul`` op).

    Args:
        a, b: float32, float16 or bfloat16 arrays of the same dtype.
        mantissa_bits: operand mantissa width ``m`` (1..type width); ``None`` = the
            dtype's own width (23, 10 or 7).
        offset: the SPEC section 4 constant, 0 <= offset < 2^23; ``None`` = the paper's
            ``1 << (23 - l(m))``.

    Returns:
        An array of the operands' dtype, bit-exact to SPEC section 1 (section 2 for
        float16/bfloat16: the float32 product rounded once to the tensor type).
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype, m, offset = _resolve(a, b, mantissa_bits, offset)
    product = _lmul_float32(_to_float32(a), _to_float32(b), m, offset)
    with np.errstate(over="ignore"):  # float32 -> float16 overflow is infinity, as specified
        return product.astype(dtype)


def _matmul_float64(a32: np.ndarray, b32: np.ndarray, m: int, offset: int, row_block: int) -> np.ndarray:
    """Sum of exact L-Mul products in float64 for 2-D float32 operands (M,K) @ (K,N)."""
    rows, _ = a32.shape
    out = np.empty((rows, b32.shape[1]), dtype=np.float64)
    for start in range(0, rows, row_block):
        block = a32[start : start + row_block, :, None]
        products = _lmul_float32(block, b32[None, :, :], m, offset)
        out[start : start + row_block] = products.astype(np.float64).sum(axis=1)
    return out


def _lmul_matmul_float64(a: np.ndarray, b: np.ndarray, m: int, offset: int) -> np.ndarray:
    """``numpy.matmul`` shape rules, every product an L-Mul, sums in float64."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul operands must have at least one dimension")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul inner dimensions differ: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a_b = np.broadcast_to(a2, batch + a2.shape[-2:])
    b_b = np.broadcast_to(b2, batch + b2.shape[-2:])
    rows, cols, inner = a2.shape[-2], b2.shape[-1], a2.shape[-1]
    # Bound the (rows, K, N) temporary to roughly 16M elements.
    row_block = max(1, (1 << 24) // max(1, inner * cols))
    out = np.empty((*batch, rows, cols), dtype=np.float64)
    for index in np.ndindex(*batch):
        out[index] = _matmul_float64(a_b[index], b_b[index], m, offset, row_block)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def lmul_matmul(
    a: np.ndarray,
    b: np.ndarray,
    mantissa_bits: int | None = None,
    *,
    offset: int | None = None,
    accumulate: type = np.float32,
) -> np.ndarray:
    """``numpy.matmul`` with every product an L-Mul (the ``lmul.LMulMatMul`` op).

    Products are exact SPEC section 1 results; they are summed in float64 and the sum
    is rounded once to the operands' dtype (or returned in float64 when
    ``accumulate=np.float64``, which the tests use as the oracle). ``mantissa_bits`` and
    ``offset`` as in :func:`lmul`.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype, m, offset = _resolve(a, b, mantissa_bits, offset)
    out = _lmul_matmul_float64(_to_float32(a), _to_float32(b), m, offset)
    if accumulate == np.float64:
        return out
    with np.errstate(over="ignore"):
        return out.astype(np.float32).astype(dtype)


def lmul_gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    trans_a: bool = False,
    trans_b: bool = False,
    mantissa_bits: int | None = None,
    offset: int | None = None,
    accumulate: type = np.float32,
) -> np.ndarray:
    """ONNX ``Gemm`` with L-Mul products (the ``lmul.LMulGemm`` op).

    ``Y = alpha * (A' (*) B') + beta * C`` where ``(*)`` is :func:`lmul_matmul` and the
    scalings are ordinary float32 multiplications. ``C`` broadcasts to ``(M, N)``.
    ``mantissa_bits`` and ``offset`` as in :func:`lmul`.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype, m, offset = _resolve(a, b, mantissa_bits, offset)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"Gemm operands must be 2-D, got {a.shape} and {b.shape}")
    a2 = a.T if trans_a else a
    b2 = b.T if trans_b else b
    s = _lmul_matmul_float64(_to_float32(a2), _to_float32(b2), m, offset)
    if accumulate == np.float64:
        y = np.float64(np.float32(alpha)) * s
        if c is not None:
            y = y + np.float64(np.float32(beta)) * _to_float32(c).astype(np.float64)
        return np.broadcast_to(y, s.shape).copy()
    y = np.float32(alpha) * s.astype(np.float32)
    if c is not None:
        c32 = _to_float32(c)
        y = y + np.float32(beta) * np.broadcast_to(c32, y.shape)
    with np.errstate(over="ignore"):
        return y.astype(np.float32).astype(dtype)
