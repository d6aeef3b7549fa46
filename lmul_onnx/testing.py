"""Small-model builders and SPEC assertions for tests, examples and bug reports.

The builders make one-node models in the ``lmul`` domain (or the standard one) with
explicit IR and opset versions that every supported onnxruntime accepts; the assertions
compare any implementation (kernels, portable bodies) with :mod:`lmul_onnx.numerics`:
element-wise products bit for bit, sums within SPEC section 3's tolerance.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from lmul_onnx import numerics
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
MATMUL_VARIANTS = (
    "general",
    "add",
    "add-masked-a",
    "add-masked-b",
    "add-masked-ab",
    "normal",
    "clamped",
    "clamped-masked-b",
    "clamped-high",
    "clamped-high-masked-b",
    "clamped-low",
    "clamped-low-masked-b",
)


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


def square_of_product_model(weights: np.ndarray, batch: int | str = 2) -> onnx.ModelProto:
    """``y = (x @ W)^2``: node ``proj/MatMul`` (an activation times a weight), then node
    ``square/Mul`` (an activation times itself); ``x`` is ``[batch, rows of W]``."""
    w = onnx.numpy_helper.from_array(np.asarray(weights, np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="proj/MatMul"),
            helper.make_node("Mul", ["h", "h"], ["y"], name="square/Mul"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, w.dims[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, w.dims[1]])],
        [w],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=IR_VERSION
    )


def node_offsets(model: onnx.ModelProto) -> dict[str, int | None]:
    """``{name: offset attribute (None: absent)}`` of the main graph's ``lmul`` nodes."""
    return {
        n.name: next((a.i for a in n.attribute if a.name == "offset"), None)
        for n in model.graph.node
        if n.domain == DOMAIN
    }


# Corner cases of SPEC section 1: signed zeros, subnormals, the smallest normal, +-1, the
# largest finite values, infinities, NaNs, the worked examples and rounding edges.
SPECIAL_BITS = [
    0x00000000,
    0x80000000,
    0x00000001,
    0x807FFFFF,
    0x00800000,
    0x3F800000,
    0xBF800000,
    0x7F7FFFFF,
    0xFF7FFFFF,
    0x7F800000,
    0xFF800000,
    0x7FC00000,
    0xFFC00001,
    0x7F800001,
    0x0DA24260,
    0x1E3CE508,
    0x3F800001,
    0x3FFFFFFF,
    0x7F7FFFF0,
    0x00FFFFFF,
]


def random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bit patterns over every exponent, plus zeros, subnormals, infinities and NaNs."""
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    specials = np.array(SPECIAL_BITS, dtype=np.uint32)
    return np.concatenate([specials, bits, rng.choice(specials, size=n // 8)])


def assert_same_bits(result: np.ndarray, expected: np.ndarray) -> None:
    """Equal bit patterns, except that any NaN matches any NaN (SPEC: payloads excepted)."""
    assert result.shape == expected.shape and result.dtype == expected.dtype
    r_nan = np.isnan(result.astype(np.float32))
    e_nan = np.isnan(expected.astype(np.float32))
    assert np.array_equal(r_nan, e_nan), f"NaN positions differ at {np.argwhere(r_nan != e_nan)[:5]}"
    view = np.uint32 if result.dtype == np.float32 else np.uint16
    r, e = result.view(view)[~r_nan], expected.view(view)[~e_nan]
    mismatch = np.flatnonzero(r != e)
    assert mismatch.size == 0, (
        f"{mismatch.size} elements differ, first: {r[mismatch[:3]]} vs {e[mismatch[:3]]}"
    )


# SPEC 2: the float32 sum is converted to the tensor type once, round-to-nearest-even: an
# error of at most half an ulp, which is 2^-p relative for normal results and half the
# subnormal spacing absolute below them (float16: 2^-25, as 2^-24 is its smallest subnormal;
# float32 results are the sum itself, its subnormals exact). (relative, absolute) per type.
TYPE_ROUNDING = {
    np.dtype(np.float32): (2.0**-24, 0.0),
    np.dtype(np.float16): (2.0**-11, 2.0**-25),
    np.dtype(ml_dtypes.bfloat16): (2.0**-8, 2.0**-134),
}


def rounding_bound(dtype: np.dtype, expected64: np.ndarray, tolerance: np.ndarray | float) -> np.ndarray:
    """The largest error the final rounding to ``dtype`` adds (SPEC 2) to a float32 value
    within ``tolerance`` of ``expected64``: half an ulp of that value, subnormals included."""
    relative, absolute = TYPE_ROUNDING[np.dtype(dtype)]
    return relative * (np.abs(expected64) + tolerance) + absolute


def sum_tolerance(a: np.ndarray, b: np.ndarray, m: int | None, inner: int) -> np.ndarray:
    """K * 2^-23 * sum|products|: |L-Mul(a, b)| = L-Mul(|a|, |b|), so the sum of the
    magnitudes is the L-Mul matmul of the magnitudes."""
    magnitudes = numerics.lmul_matmul(np.abs(a), np.abs(b), mantissa_bits=m, accumulate=np.float64)
    return max(inner, 1) * 2.0**-23 * magnitudes


def assert_close_to_reference(result: np.ndarray, expected64: np.ndarray, tolerance: np.ndarray) -> None:
    assert result.shape == expected64.shape, (result.shape, expected64.shape)
    error = np.abs(result.astype(np.float64) - expected64)
    bound = tolerance + rounding_bound(result.dtype, expected64, tolerance) + 1e-30
    assert np.all(error <= bound), f"max error/bound {np.max(error / bound):.3g}"


def portable_unsupported() -> str | None:
    """Why portable models cannot be written and run here (None when they can): they need
    onnx with opset 26 and onnxruntime >= 1.30 (BitCast)."""
    import onnxruntime

    from lmul_onnx.portable import PORTABLE_ONNXRUNTIME, PORTABLE_OPSET

    if onnx.defs.onnx_opset_version() < PORTABLE_OPSET:
        return f"portable models need onnx >= 1.21 (opset {PORTABLE_OPSET}); installed {onnx.__version__}"
    release = tuple(int(part) for part in onnxruntime.__version__.split(".")[:2])
    if release < PORTABLE_ONNXRUNTIME:
        return f"portable models need onnxruntime >= 1.30 (BitCast); installed {onnxruntime.__version__}"
    return None
