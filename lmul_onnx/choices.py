"""The vocabulary of the verbs' options — scopes, baseline kinds, default tolerances —
in plain Python, so that the command line can build its options (and answer ``--help``
or a usage error) without importing numpy, onnx or onnxruntime."""

from __future__ import annotations

from enum import Enum


class Scope(str, Enum):
    """Which products to convert, by where their operands come from."""

    ALL = "all"
    ATTENTION = "attention"  # products of two activations (Q·Kᵀ, probabilities·V)
    WEIGHTS = "weights"  # products with a constant operand (initializer or Constant)


# Baseline kind -> the ONNX TensorProto data type its operands are rounded to.
BASELINE_TYPES: dict[str, str] = {
    "fp8-e4m3": "FLOAT8E4M3FN",
    "fp8-e5m2": "FLOAT8E5M2",
    "bf16": "BFLOAT16",
}

# validate's default tolerances of every graph output (numpy allclose semantics).
DEFAULT_ATOL = 1e-2
DEFAULT_RTOL = 1e-1
