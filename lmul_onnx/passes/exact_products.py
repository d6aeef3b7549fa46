"""Products that L-Mul cannot improve: a constant operand of exact powers of two.

When one operand of a product is a constant whose every element is 0, ±2^k or a 0/1
mask, the product is already multiplication-free in hardware (an exponent addition, a
sign flip or a select). L-Mul would only add its offset error: L-Mul(x, 1.0) is x plus
2^-l(m) of x's exponent unit (SPEC §1), up to 6.25 % too large at m = 23. Such products
are left exact by default (``convert --every-product`` converts them anyway, as the
paper's "replace every multiplication" does) and ``energy`` counts them separately.

A constant is an initializer, a ``Constant`` / ``ConstantOfShape`` output, or one of
those seen through ops that only move, select or re-type values
(:data:`VALUE_PRESERVING_OPS`). Values are read in chunks and the check stops at the
first element that is not exact, so a real weight matrix costs one small chunk.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

EXACT_POWER_OF_TWO = "exact power of two"
ZERO_ONE_MASK = "0/1 mask"
EXACT_REASONS = (EXACT_POWER_OF_TWO, ZERO_ONE_MASK)

# Ops whose output values are all among their first input's values (possibly re-typed).
VALUE_PRESERVING_OPS = frozenset(
    {
        "Transpose",
        "Cast",
        "CastLike",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Expand",
        "Tile",
        "Slice",
    }
)
_CHUNK = 1 << 16
_MAX_DEPTH = 32


def _attribute_array(node: ir.Node) -> np.ndarray | None:
    """The value of a ``Constant`` node (any of its value attributes) as an array."""
    for name, attribute in node.attributes.items():
        value = attribute.value
        if name in ("value", "sparse_value") and hasattr(value, "numpy"):
            return np.asarray(value.numpy())
        if name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(value)
    return None


def constant_values(value: ir.Value | None) -> np.ndarray | None:
    """The values of a constant operand (an array holding every element it can take),
    followed through value-preserving ops; ``None`` when ``value`` is not constant."""
    for _ in range(_MAX_DEPTH):
        if value is None:
            return None
        if value.const_value is not None:
            return np.asarray(value.const_value.numpy())
        producer = value.producer()
        if producer is None or producer.domain not in ("", "ai.onnx"):
            return None
        if producer.op_type == "Constant":
            return _attribute_array(producer)
        if producer.op_type == "ConstantOfShape":
            attribute = producer.attributes.get("value")
            return np.asarray(attribute.value.numpy()) if attribute is not None else np.zeros(1)
        if producer.op_type not in VALUE_PRESERVING_OPS:
            return None
        value = producer.inputs[0] if producer.inputs else None
    return None


def classify_values(values: np.ndarray) -> str | None:
    """:data:`ZERO_ONE_MASK` when every element is 0 or 1, :data:`EXACT_POWER_OF_TWO`
    when every element is 0 or ±2^k, else ``None`` (also for empty or non-numeric data)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return None
    mask = True
    for start in range(0, flat.size, _CHUNK):
        try:
            chunk = flat[start : start + _CHUNK].astype(np.float64)
        except (TypeError, ValueError):
            return None
        if not np.all(np.isfinite(chunk)):
            return None
        mantissa, _ = np.frexp(chunk)
        if not np.all((mantissa == 0) | (np.abs(mantissa) == 0.5)):
            return None
        mask = mask and bool(np.all((chunk == 0) | (chunk == 1)))
    return ZERO_ONE_MASK if mask else EXACT_POWER_OF_TWO


def exact_operand_reason(operands: Iterable[ir.Value | None]) -> str | None:
    """Why a product with these operands is exact without L-Mul, or ``None``.

    A mask wins over a power of two when both operands qualify.
    """
    reasons = set()
    for operand in operands:
        values = constant_values(operand)
        if values is not None:
            reason = classify_values(values)
            if reason is not None:
                reasons.add(reason)
    if ZERO_ONE_MASK in reasons:
        return ZERO_ONE_MASK
    return EXACT_POWER_OF_TWO if reasons else None


def exact_product_reason(node: ir.Node) -> str | None:
    """:func:`exact_operand_reason` of a MatMul / Gemm / Mul node (its two factors)."""
    return exact_operand_reason(node.inputs[:2])
