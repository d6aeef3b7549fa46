"""Element-level precision of one product: L-Mul at each mantissa width against fp8 and
bfloat16 multiplication (the table behind the paper's "L-Mul with a 4-bit mantissa is as
precise as fp8 e4m3" claim).

For N pairs of operands drawn from N(0, 1) (seeded), the exact product is the float64
product of the float32 operands; only pairs whose exact product has magnitude >= 2^-6
count, so that the relative error is not dominated by products near zero. Each row
gives the mean |relative error| (``mean_abs_error``) and the mean signed relative error
(``bias``: positive when products come out too large on average):

* ``lmul_mK``: L-Mul (SPEC section 1) with operands rounded to K mantissa bits and the
  paper's offset;
* ``lmul_mK_unbiased``: the same with the ``unbiased`` offset of SPEC section 4
  (:data:`lmul_onnx.offsets.UNBIASED_OFFSETS`, derived without data), for K in
  :data:`UNBIASED_WIDTHS`;
* ``fp8_e4m3``, ``fp8_e5m2``, ``bf16``: operands rounded to the format, multiplied
  exactly, and the product rounded to the format again (what a multiplier of that
  format returns).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from lmul_onnx import numerics
from lmul_onnx.offsets import UNBIASED_OFFSETS

LMUL_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 23)
UNBIASED_WIDTHS = (3, 4, 7, 23)
FORMATS = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "bf16": ml_dtypes.bfloat16,
}
MIN_MAGNITUDE = 2.0**-6


def _format_product(a: np.ndarray, b: np.ndarray, dtype: type) -> np.ndarray:
    a_narrow = a.astype(dtype).astype(np.float64)
    b_narrow = b.astype(dtype).astype(np.float64)
    return (a_narrow * b_narrow).astype(np.float32).astype(dtype).astype(np.float64)


def precision_rows(pairs: int = 1_000_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{row: {"mean_abs_error", "bias"}}`` (fractions) for every row of the module docstring."""
    if pairs < 1:
        raise ValueError("pairs must be positive")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(pairs).astype(np.float32)
    b = rng.standard_normal(pairs).astype(np.float32)
    exact = a.astype(np.float64) * b.astype(np.float64)
    counted = np.abs(exact) >= MIN_MAGNITUDE
    exact = exact[counted]
    a, b = a[counted], b[counted]

    def errors(product: np.ndarray) -> dict[str, float]:
        relative = (product.astype(np.float64) - exact) / exact  # signed: > 0 when too large
        return {"mean_abs_error": float(np.mean(np.abs(relative))), "bias": float(np.mean(relative))}

    table = {f"lmul_m{m}": errors(numerics.lmul(a, b, mantissa_bits=m)) for m in LMUL_WIDTHS}
    for m in UNBIASED_WIDTHS:
        unbiased = numerics.lmul(a, b, mantissa_bits=m, offset=UNBIASED_OFFSETS[m])
        table[f"lmul_m{m}_unbiased"] = errors(unbiased)
    for name, dtype in FORMATS.items():
        table[name] = errors(_format_product(a, b, dtype))
    return table


def precision_table(pairs: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Mean |relative error| of one product per row (keys ``lmul_m1`` ... ``bf16``)."""
    return {name: row["mean_abs_error"] for name, row in precision_rows(pairs, seed).items()}
