"""Small-model builders for tests, examples and bug reports.

They build one-node models in the ``lmul`` domain (or the standard one) with explicit IR
and opset versions that every supported onnxruntime accepts.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION

IR_VERSION = 9
ONNX_OPSET = 17


def onnx_type(dtype: Any) -> int:
    """Return the ONNX element type of a numpy dtype (bfloat16 via ml_dtypes)."""
    return int(ir.DataType.from_numpy(np.dtype(dtype)))


def single_op_model(
    op_type: str,
    input_dtypes: Sequence[Any],
    *,
    domain: str = DOMAIN,
    node_name: str = "node0",
    input_names: Sequence[str] | None = None,
    output_dtype: Any = None,
    opset: int = ONNX_OPSET,
    **attributes: Any,
) -> onnx.ModelProto:
    """Build a model with one node ``op_type`` whose inputs are graph inputs.

    Shapes are left symbolic, so one model serves every shape a test feeds it. An input
    name of ``""`` leaves that (optional) input out.
    """
    names = list(input_names) if input_names is not None else [f"in{i}" for i in range(len(input_dtypes))]
    output_dtype = output_dtype if output_dtype is not None else input_dtypes[0]
    node = helper.make_node(op_type, names, ["out"], name=node_name, domain=domain, **attributes)
    inputs = [
        helper.make_tensor_value_info(name, onnx_type(dtype), None)
        for name, dtype in zip(names, input_dtypes, strict=True)
        if name
    ]
    graph = helper.make_graph(
        [node], "single_op", inputs, [helper.make_tensor_value_info("out", onnx_type(output_dtype), None)]
    )
    opsets = [helper.make_opsetid("", opset)]
    if domain == DOMAIN:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


# The names of the matmul variants (custom_ops/kernels/lmul_gemm.h, GemmVariant).
MATMUL_VARIANTS = ("general", "add", "add-masked-a", "add-masked-b", "add-masked-ab", "normal")


@functools.cache
def _variant_hook() -> Any:
    from lmul_onnx.runtime import get_library_path

    function = ctypes.CDLL(get_library_path()).lmul_matmul_variant
    function.restype = ctypes.c_int
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    return function


def matmul_variant(a: np.ndarray, b: np.ndarray, mantissa_bits: int = 23, offset: int = -1) -> int:
    """The index in :data:`MATMUL_VARIANTS` of the kernel the native pre-scan picks for
    float32 operands ``a`` and ``b`` at width ``m`` and ``offset`` (-1: the paper's); -1
    for an invalid ``m`` or offset. Tests use it to check that data selects the
    micro-kernel they mean to exercise."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return _variant_hook()(a.ctypes.data, a.size, b.ctypes.data, b.size, mantissa_bits, offset)
