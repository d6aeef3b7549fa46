"""Evaluate ``lmul`` models without the native library: ``onnx.reference`` plus the numpy
oracle of :mod:`lmul_onnx.numerics` and :mod:`lmul_onnx.conv` for the ``lmul`` ops.

Slow, but independent of the C++ kernels: the tests compare the two, and users can check
a converted model on a machine without the custom-op library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from lmul_onnx import conv, numerics
from lmul_onnx.ops import DOMAIN, check_model


class LMul(OpRun):
    op_domain = DOMAIN

    def _run(
        self, a: np.ndarray, b: np.ndarray, mantissa_bits: int | None = None, offset: int | None = None
    ) -> tuple[np.ndarray]:
        return (numerics.lmul(a, b, mantissa_bits=mantissa_bits, offset=offset),)


class LMulMatMul(OpRun):
    op_domain = DOMAIN

    def _run(
        self, a: np.ndarray, b: np.ndarray, mantissa_bits: int | None = None, offset: int | None = None
    ) -> tuple[np.ndarray]:
        return (numerics.lmul_matmul(a, b, mantissa_bits=mantissa_bits, offset=offset),)


class LMulGemm(OpRun):
    op_domain = DOMAIN

    def _run(
        self,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        transA: int = 0,
        transB: int = 0,
        mantissa_bits: int | None = None,
        offset: int | None = None,
    ) -> tuple[np.ndarray]:
        return (
            numerics.lmul_gemm(
                a,
                b,
                c,
                alpha=alpha,
                beta=beta,
                trans_a=bool(transA),
                trans_b=bool(transB),
                mantissa_bits=mantissa_bits,
                offset=offset,
            ),
        )


def _conv_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Node attributes as :mod:`lmul_onnx.conv` keywords (unknown ones make it raise)."""
    if isinstance(attributes.get("auto_pad"), bytes):
        attributes["auto_pad"] = attributes["auto_pad"].decode()
    return {name: value for name, value in attributes.items() if value is not None}


class LMulConv(OpRun):
    op_domain = DOMAIN

    def _run(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attributes: Any
    ) -> tuple[np.ndarray]:
        return (conv.lmul_conv(x, w, b, **_conv_attributes(attributes)),)


class LMulConvTranspose(OpRun):
    op_domain = DOMAIN

    def _run(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attributes: Any
    ) -> tuple[np.ndarray]:
        return (conv.lmul_conv_transpose(x, w, b, **_conv_attributes(attributes)),)


LMUL_REFERENCE_OPS = [LMul, LMulMatMul, LMulGemm, LMulConv, LMulConvTranspose]


def reference_evaluator(model: onnx.ModelProto | str, **kwargs: Any) -> ReferenceEvaluator:
    """An ``onnx.reference.ReferenceEvaluator`` that also evaluates ``lmul`` ops.

    The model is held to the domain's rules first (:func:`lmul_onnx.ops.check_model`:
    known attributes of the right types, ``lmul`` version 1), as the kernels are.
    """
    check_model(onnx.load(model, load_external_data=False) if isinstance(model, str) else model)
    return ReferenceEvaluator(model, new_ops=LMUL_REFERENCE_OPS, **kwargs)
