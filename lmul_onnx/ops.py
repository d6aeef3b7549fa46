"""The ``lmul`` op domain: names, version and attributes, in one table.

Everything that writes or reads ``lmul`` nodes (the rewrite passes, the energy counter,
the portable reference, the tests) takes these names from here.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "lmul"
DOMAIN_VERSION = 1
MANTISSA_BITS = "mantissa_bits"


@dataclass(frozen=True)
class OpMapping:
    """A standard ONNX op and the ``lmul`` op that replaces it."""

    standard: str
    lmul: str
    description: str


OP_MAPPINGS: tuple[OpMapping, ...] = (
    OpMapping("MatMul", "LMulMatMul", "numpy matmul, every product an L-Mul"),
    OpMapping("Gemm", "LMulGemm", "alpha * (A' (*) B') + beta * C, products by L-Mul"),
    OpMapping("Mul", "LMul", "element-wise L-Mul with numpy broadcasting"),
    OpMapping("Conv", "LMulConv", "ONNX Conv (1-D to 3-D, groups), products by L-Mul"),
    OpMapping("ConvTranspose", "LMulConvTranspose", "ONNX ConvTranspose, products by L-Mul"),
)

STANDARD_TO_LMUL: dict[str, str] = {m.standard: m.lmul for m in OP_MAPPINGS}
LMUL_TO_STANDARD: dict[str, str] = {m.lmul: m.standard for m in OP_MAPPINGS}
SUPPORTED_OPS: tuple[str, ...] = tuple(m.standard for m in OP_MAPPINGS)
