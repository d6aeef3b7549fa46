"""Portable ``lmul`` models: each op's body as a model-local function of standard ONNX ops.

A node of the ``lmul`` domain that also has a model-local function of the same domain and
name runs in two ways: with the custom-op library registered, onnxruntime uses the native
kernel; without it, onnxruntime (>= 1.30) or any runtime that inlines functions runs the
function body. :func:`add_portable_functions` writes those bodies, so a converted model
runs wherever onnxruntime runs, no library needed.

The bodies compute SPEC section 1 with standard ops: ``BitCast`` (opset 26) to the bit
patterns, the operand rounding in int64, the one integer addition in uint32, the special
cases as a float factor per operand (``+-1`` normal, ``+-0`` zero, ``+-inf``, NaN) multiplied
into the result. Element-wise products are bit-exact. Matrix products run a ``Loop`` over
slices of :data:`K_CHUNK` columns of A (rows of B): each step forms the ``(..., M,
K_CHUNK, N)`` products of its slice, sums them with ``ReduceSum`` (float32) and adds the
partial sum to the result, so the memory a product needs grows with ``M * N``, not
``M * K * N`` (SPEC section 3 lets the sum run in any order).

Costs and limits:

* the model's default-domain opset is raised to 26 with ``onnx.version_converter`` when
  it is older (``BitCast`` needs it; onnxruntime wants one opset per domain across the
  model and its functions), and its IR version to at least 9 (function attribute
  defaults). A model the version converter cannot raise is refused, with its reason, and
  so is one with functions of its own (the converter drops them);
* ``LMulGemm`` nodes without C get a zero C (:func:`_give_gemm_c`);
* ``LMul``, ``LMulMatMul`` and ``LMulGemm`` only: other ``lmul`` ops are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from lmul_onnx.graph import proto_graphs
from lmul_onnx.numerics import FLOAT32_MANTISSA_BITS, paper_offset
from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION, MANTISSA_BITS, OFFSET

PORTABLE_OPSET = 26  # BitCast
PORTABLE_ONNXRUNTIME = (1, 30)  # the first onnxruntime releases that run BitCast
MIN_IR_VERSION = 9  # FunctionProto.attribute_proto (attribute defaults)
PORTABLE_OPS = ("LMul", "LMulMatMul", "LMulGemm")
# Columns of A summed per Loop step of a matrix product: bounds the product tensors at
# 4 * M * K_CHUNK * N bytes each, while keeping the Loop's per-step cost small against K.
K_CHUNK = 32

_ONE_BITS = 0x3F800000
_INF_BITS = 0x7F800000
_SMALLEST_NORMAL_BITS = 0x00800000


class PortableError(ValueError):
    """The model cannot be made portable (the reason is the message)."""


@dataclass
class PortableReport:
    """What :func:`add_portable_functions` changed."""

    functions: list[str] = field(default_factory=list)
    opset_before: int = 0
    opset_after: int = 0
    ir_before: int = 0
    ir_after: int = 0
    gemm_c_added: int = 0

    def describe(self) -> str:
        changes = [f"portable bodies for {', '.join(self.functions) or 'no lmul op'}"]
        if self.opset_after != self.opset_before:
            changes.append(f"opset {self.opset_before} -> {self.opset_after}")
        if self.ir_after != self.ir_before:
            changes.append(f"IR {self.ir_before} -> {self.ir_after}")
        if self.gemm_c_added:
            changes.append(f"zero C given to {self.gemm_c_added} LMulGemm node(s) without one")
        return "; ".join(changes)


def _mantissa_tables() -> dict[str, np.ndarray]:
    """Per-``m`` constants of the rounding and the addition (index m = 1..23; 0 unused)."""
    tables: dict[str, list[int]] = {
        "half_minus_1": [0],
        "lsb": [0],
        "keep": [-1],
        "largest": [0],
        "offset": [0],
    }
    for m in range(1, FLOAT32_MANTISSA_BITS + 1):
        drop = FLOAT32_MANTISSA_BITS - m
        tables["half_minus_1"].append((1 << (drop - 1)) - 1 if drop else 0)
        tables["lsb"].append(1 << drop if drop else 0)
        tables["keep"].append(~((1 << drop) - 1))
        tables["largest"].append((0x7F7FFFFF >> drop) << drop)
        tables["offset"].append(paper_offset(m))
    return {name: np.array(values, dtype=np.int64) for name, values in tables.items()}


_TABLES = _mantissa_tables()


class _Body:
    """Builds the node list of one function body; every helper returns its output name."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        # Names of a subgraph's body must not shadow those of the scope around it.
        self._prefix = prefix

    def op(self, op_type: str, *inputs: str, **attributes: object) -> str:
        self._count += 1
        output = f"_{self._prefix}{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value: object, dtype: type = np.int64) -> str:
        return self.op("Constant", value=numpy_helper.from_array(np.array(value, dtype=dtype)))

    def attribute(self, name: str, kind: str) -> str:
        """A scalar Constant holding the calling node's attribute ``name`` (value_int/value_float)."""
        output = self.op("Constant", **{kind: 0})
        self.nodes[-1].attribute[0].ref_attr_name = name
        return output

    def mantissa_bits(self, x: str) -> str:
        """``m``: the node's attribute, or (attribute absent = 0) the width of ``x``'s type,
        found by round-tripping 1 + 2^-11 and 1 + 2^-8 through it (fp32 keeps both, fp16
        the second)."""
        requested = self.attribute(MANTISSA_BITS, "value_int")
        widths = []
        for probe in (1 + 2.0**-11, 1 + 2.0**-8):
            value = self.const(probe, np.float32)
            back = self.op("Cast", self.op("CastLike", value, x), to=TensorProto.FLOAT)
            widths.append(self.op("Equal", back, value))
        width = self.op(
            "Where", widths[0], self.const(23), self.op("Where", widths[1], self.const(10), self.const(7))
        )
        return self.op("Where", self.op("Equal", requested, self.const(0)), width, requested)

    def operand(self, x32: str, m: str) -> tuple[str, str]:
        """SPEC section 1 for one float32 operand: its magnitude bits rounded to ``m`` bits
        (uint32; 0 for a zero or subnormal, the largest finite value for Inf and NaN) and its
        float special factor (+-1 normal, +-0 zero or subnormal, +-inf, NaN)."""
        tables = {name: self.op("Gather", self.const(table), m) for name, table in _TABLES.items()}
        magnitude = self.op(
            "Cast", self.op("BitCast", self.op("Abs", x32), to=TensorProto.INT32), to=TensorProto.INT64
        )
        lsb = self.op("Min", self.op("BitwiseAnd", magnitude, tables["lsb"]), self.const(1))
        rounded = self.op(
            "BitwiseAnd",
            self.op("Add", self.op("Add", magnitude, tables["half_minus_1"]), lsb),
            tables["keep"],
        )
        rounded = self.op("Min", rounded, tables["largest"])  # saturating; Inf/NaN use the factor
        zero = self.op("Less", rounded, self.const(_SMALLEST_NORMAL_BITS))
        bits = self.op("Cast", self.op("Where", zero, self.const(0), rounded), to=TensorProto.UINT32)
        factor = self.op("Where", zero, self.const(0.0, np.float32), self.const(1.0, np.float32))
        factor = self.op("Where", self.op("IsInf", x32), self.const(np.inf, np.float32), factor)
        factor = self.op("Where", self.op("IsNaN", x32), self.const(np.nan, np.float32), factor)
        negative = self.op("Less", self.op("BitCast", x32, to=TensorProto.INT32), self.const(0, np.int32))
        # A multiplication, not Neg: onnxruntime's Neg turns +0 into +0 (0 - x), not -0.
        sign = self.op("Where", negative, self.const(-1.0, np.float32), self.const(1.0, np.float32))
        factor = self.op("Mul", factor, sign)
        return bits, factor

    def bias(self, m: str) -> str:
        """``0x3F800000 - offset`` (uint32 scalar): the node's ``offset`` attribute (absent =
        -1) or the paper's ``1 << (23 - l(m))``."""
        requested = self.attribute(OFFSET, "value_int")
        paper = self.op("Gather", self.const(_TABLES["offset"]), m)
        offset = self.op("Where", self.op("Less", requested, self.const(0)), paper, requested)
        return self.op("Cast", self.op("Sub", self.const(_ONE_BITS), offset), to=TensorProto.UINT32)

    def products(self, a: tuple[str, str], b: tuple[str, str], bias: str) -> str:
        """Broadcast L-Mul products (float32) of two prepared operands.

        ``|a| + |b|`` fits uint32 (both are at most 0x7F7FFFFF); ``r = |a| + |b| - bias``
        underflows below 0x00800000 + bias and overflows from 0x7F800000 + bias. A zero
        operand has magnitude 0, so its sums stay finite and its factor makes them +-0; an
        Inf or NaN operand has the largest magnitude, so its sums are non-zero and its
        factor makes them +-inf or NaN (Inf x 0 = NaN as SPEC says)."""
        total = self.op("Add", a[0], b[0])
        low = self.op("Add", self.const(_SMALLEST_NORMAL_BITS, np.uint32), bias)
        high = self.op("Add", self.const(_INF_BITS, np.uint32), bias)
        r = self.op("Sub", self.op("Clip", total, low, high), bias)
        r = self.op("Where", self.op("Less", total, low), self.const(0, np.uint32), r)
        value = self.op("BitCast", r, to=TensorProto.FLOAT)
        return self.op("Mul", value, self.op("Mul", a[1], b[1]))

    def matrix_product(self, a32: str, b32: str, m: str) -> str:
        """Sum over K of the products of 2-D-or-more float32 operands (..., M, K) and
        (..., K, N): a Loop over slices of K_CHUNK along K (see the module docstring)."""
        a_int, a_factor = self.operand(a32, m)
        b_int, b_factor = self.operand(b32, m)
        bias = self.bias(m)
        last, third = self.const([-1]), self.const([-3])
        k = self.op("Gather", self.op("Shape", a32), self.const(-1))
        steps = self.op("Div", self.op("Add", k, self.const(K_CHUNK - 1)), self.const(K_CHUNK))
        # Zeros of the broadcast result shape (..., M, N): only the shape of the sum is used.
        # (K = 0 included: a sum over an empty axis is 0).
        a_rows = self.op("ReduceSum", a_factor, last, keepdims=1)
        b_cols = self.op("ReduceSum", b_factor, self.const([-2]), keepdims=1)
        zeros = self.op(
            "Expand", self.const(0.0, np.float32), self.op("Shape", self.op("Add", a_rows, b_cols))
        )

        step = _Body(prefix="step")
        start = step.op("Mul", step.op("Reshape", "_step_i", step.const([1])), step.const([K_CHUNK]))
        end = step.op("Add", start, step.const([K_CHUNK]))
        a_cols, b_rows = step.const([-1]), step.const([-2])
        a_parts = tuple(
            step.op("Unsqueeze", step.op("Slice", x, start, end, a_cols), last) for x in (a_int, a_factor)
        )
        b_parts = tuple(
            step.op("Unsqueeze", step.op("Slice", x, start, end, b_rows), third) for x in (b_int, b_factor)
        )
        partial = step.op("ReduceSum", step.products(a_parts, b_parts, bias), step.const([-2]), keepdims=0)
        step.nodes.append(helper.make_node("Add", ["_step_sum", partial], ["_step_sum_out"]))
        step.nodes.append(helper.make_node("Identity", ["_step_cond"], ["_step_cond_out"]))
        loop_body = helper.make_graph(
            step.nodes,
            "k_chunk",
            [
                helper.make_tensor_value_info("_step_i", TensorProto.INT64, []),
                helper.make_tensor_value_info("_step_cond", TensorProto.BOOL, []),
                helper.make_tensor_value_info("_step_sum", TensorProto.FLOAT, None),
            ],
            [
                helper.make_tensor_value_info("_step_cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("_step_sum_out", TensorProto.FLOAT, None),
            ],
        )
        # An explicit condition: onnx.reference's Loop never runs when it is omitted.
        keep_going = self.const(True, np.bool_)
        return self.op("Loop", steps, keep_going, zeros, body=loop_body)

    def function(
        self, name: str, inputs: list[str], attributes: dict[str, object], opset: int
    ) -> onnx.FunctionProto:
        function = helper.make_function(
            DOMAIN, name, inputs, ["Y"], self.nodes, [helper.make_opsetid("", opset)], attributes=[]
        )
        function.attribute_proto.extend(
            helper.make_attribute(key, value) for key, value in attributes.items()
        )
        return function


_DEFAULTS = {MANTISSA_BITS: 0, OFFSET: -1}


def _lmul_function(opset: int) -> onnx.FunctionProto:
    body = _Body()
    a32, b32 = (body.op("Cast", x, to=TensorProto.FLOAT) for x in ("A", "B"))
    m = body.mantissa_bits("A")
    product = body.products(body.operand(a32, m), body.operand(b32, m), body.bias(m))
    body.nodes.append(helper.make_node("CastLike", [product, "A"], ["Y"]))
    return body.function("LMul", ["A", "B"], _DEFAULTS, opset)


def _lmul_matmul_function(opset: int) -> onnx.FunctionProto:
    """numpy matmul rules: a 1-D A is read as (1, K), a 1-D B as (K, 1); that dimension is
    dropped from the result."""
    body = _Body()
    a32, b32 = (body.op("Cast", x, to=TensorProto.FLOAT) for x in ("A", "B"))
    one, two, big = body.const([1]), body.const([2]), body.const([1 << 62])
    a_shape, b_shape = body.op("Shape", a32), body.op("Shape", b32)
    a_rank, b_rank = body.op("Size", a_shape), body.op("Size", b_shape)
    a_rank2, b_rank2 = body.op("Max", a_rank, body.const(2)), body.op("Max", b_rank, body.const(2))
    # (1, *shape)[-max(rank, 2):] and (*shape, 1)[:max(rank, 2)]: unchanged unless 1-D.
    a_shape2 = body.op(
        "Slice",
        body.op("Concat", one, a_shape, axis=0),
        body.op("Neg", body.op("Reshape", a_rank2, one)),
        big,
    )
    b_shape2 = body.op(
        "Slice", body.op("Concat", b_shape, one, axis=0), body.const([0]), body.op("Reshape", b_rank2, one)
    )
    m = body.mantissa_bits("A")
    y = body.matrix_product(body.op("Reshape", a32, a_shape2), body.op("Reshape", b32, b_shape2), m)
    # Result shape: batch dims, M unless A was 1-D, N unless B was 1-D.
    y_shape = body.op("Shape", y)
    keep_m = body.op("Reshape", body.op("Min", body.op("Sub", a_rank, body.const(1)), body.const(1)), one)
    keep_n = body.op("Reshape", body.op("Min", body.op("Sub", b_rank, body.const(1)), body.const(1)), one)
    batch = body.op("Slice", y_shape, body.const([0]), body.const([-2]))
    m_part = body.op("Slice", y_shape, body.const([-2]), body.op("Sub", keep_m, two))
    n_part = body.op("Slice", y_shape, body.const([-1]), body.op("Sub", body.op("Mul", keep_n, big), one))
    out_shape = body.op("Concat", batch, m_part, n_part, axis=0)
    body.nodes.append(helper.make_node("CastLike", [body.op("Reshape", y, out_shape), "A"], ["Y"]))
    return body.function("LMulMatMul", ["A", "B"], _DEFAULTS, opset)


def _transposed_if(body: _Body, x: str, flag: str) -> str:
    """``Transpose(x)`` when the int attribute ``flag`` is set, else ``x``."""
    condition = body.op("Cast", body.attribute(flag, "value_int"), to=TensorProto.BOOL)
    out_t, out_i = f"{x}_t", f"{x}_i"
    then = helper.make_graph(
        [helper.make_node("Transpose", [x], [out_t])],
        "transposed",
        [],
        [helper.make_value_info(out_t, onnx.TypeProto())],
    )
    otherwise = helper.make_graph(
        [helper.make_node("Identity", [x], [out_i])],
        "as_is",
        [],
        [helper.make_value_info(out_i, onnx.TypeProto())],
    )
    return body.op("If", condition, then_branch=then, else_branch=otherwise)


def _lmul_gemm_function(opset: int) -> onnx.FunctionProto:
    """``alpha * (A' (*) B') + beta * C`` (C is always given: see :func:`_give_gemm_c`)."""
    body = _Body()
    a32, b32, c32 = (body.op("Cast", x, to=TensorProto.FLOAT) for x in ("A", "B", "C"))
    a2, b2 = _transposed_if(body, a32, "transA"), _transposed_if(body, b32, "transB")
    s = body.matrix_product(a2, b2, body.mantissa_bits("A"))
    alpha, beta = body.attribute("alpha", "value_float"), body.attribute("beta", "value_float")
    y = body.op("Add", body.op("Mul", alpha, s), body.op("Mul", beta, c32))
    body.nodes.append(helper.make_node("CastLike", [y, "A"], ["Y"]))
    defaults = {**_DEFAULTS, "alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    return body.function("LMulGemm", ["A", "B", "C"], defaults, opset)


def _give_gemm_c(model: onnx.ModelProto) -> int:
    """Give every ``LMulGemm`` without C a zero C (``CastLike(0, A)``, inserted before it).

    A function body cannot test whether an optional input was given (onnxruntime rejects a
    body that names a missing input, and the one standard op that could stand in for it,
    LayerNormalization's optional bias, crashes onnxruntime 1.32's optimiser). Adding
    ``beta * 0`` changes nothing but the sign of a -0 result. Returns the count.
    """
    names = {name for node in _all_nodes(model) for name in (*node.input, *node.output)}
    count = 0

    def unique(base: str) -> str:
        name, i = base, 0
        while name in names:
            i += 1
            name = f"{base}_{i}"
        names.add(name)
        return name

    for nodes in list(_node_lists(model)):
        index = 0
        while index < len(nodes):
            node = nodes[index]
            if (
                node.domain == DOMAIN
                and node.op_type == "LMulGemm"
                and (len(node.input) < 3 or not node.input[2])
            ):
                zero, c = unique(f"{node.name or 'LMulGemm'}_zero"), unique(f"{node.name or 'LMulGemm'}_c")
                nodes.insert(index, helper.make_node("Constant", [], [zero], value_float=0.0))
                nodes.insert(index + 1, helper.make_node("CastLike", [zero, node.input[0]], [c]))
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = c
                count += 1
                index += 2
            index += 1
    return count


def with_explicit_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a portable model whose ``lmul`` nodes spell out every attribute default of
    their function. Only for evaluators that ignore function attribute defaults (the
    ``onnx.reference`` of onnx 1.23): the copied defaults of ``mantissa_bits`` (0) and
    ``offset`` (-1) mean "unset" to the function body and are refused by the kernels."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    defaults = {f.name: f.attribute_proto for f in result.functions if f.domain == DOMAIN}
    for node in _all_nodes(result):
        if node.domain == DOMAIN and node.op_type in defaults:
            present = {a.name for a in node.attribute}
            node.attribute.extend(a for a in defaults[node.op_type] if a.name not in present)
    return result


_BUILDERS = {"LMul": _lmul_function, "LMulMatMul": _lmul_matmul_function, "LMulGemm": _lmul_gemm_function}


def _node_lists(model: onnx.ModelProto) -> Iterator[Any]:
    """The node list of every graph and subgraph of the model and of its own functions
    (not the ``lmul`` domain's, which are the bodies this module writes)."""
    for graph in proto_graphs(model.graph):
        yield graph.node
    for function in model.functions:
        if function.domain != DOMAIN:
            yield function.node
            for node in function.node:
                for attribute in node.attribute:
                    subgraphs = (
                        [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
                    )
                    for subgraph in subgraphs:
                        for inner in proto_graphs(subgraph):
                            yield inner.node


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for nodes in _node_lists(model):
        yield from nodes


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_support() -> None:
    """Raise :class:`PortableError` when the installed onnx cannot write opset 26 (BitCast)."""
    if onnx.defs.onnx_opset_version() < PORTABLE_OPSET:
        raise PortableError(
            f"portable models need onnx >= 1.21 (opset {PORTABLE_OPSET}, BitCast); this onnx is "
            f"{onnx.__version__} (opset {onnx.defs.onnx_opset_version()})"
        )


def add_portable_functions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PortableReport]:
    """Return a copy of ``model`` that carries a portable body for each ``lmul`` op it uses.

    A model without ``lmul`` ops is returned unchanged.

    Raises:
        PortableError: the model uses an ``lmul`` op without a portable body, imports another
            version of the domain, or its opset cannot be raised to 26 (by onnx's version
            converter, which also drops model-local functions: models with their own
            functions must be at opset 26 already), or the installed onnx predates opset 26.
    """
    check_support()
    used: dict[str, str] = {}
    for node in _all_nodes(model):
        if node.domain == DOMAIN:
            if node.op_type not in _BUILDERS:
                raise PortableError(
                    f"--portable supports {', '.join(PORTABLE_OPS)}; node {node.name!r} is {node.op_type}"
                    " (leave that op type out of --ops, or deploy with the custom-op library)"
                )
            used.setdefault(node.op_type, node.name)
    versions = {o.version for o in model.opset_import if o.domain == DOMAIN}
    if versions - {DOMAIN_VERSION}:
        raise PortableError(
            f"the model imports {DOMAIN} version {versions}; portable bodies exist for version 1"
        )
    report = PortableReport(opset_before=_default_opset(model), ir_before=model.ir_version)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if not used:
        report.opset_after, report.ir_after = report.opset_before, report.ir_before
        return result, report
    own = [f"{f.domain}.{f.name}" for f in model.functions if f.domain != DOMAIN]
    if report.opset_before < PORTABLE_OPSET and own:
        raise PortableError(
            f"portable bodies need ONNX opset {PORTABLE_OPSET} (BitCast) and this model imports opset "
            f"{report.opset_before}, but onnx's version converter would drop its functions "
            f"({', '.join(own)}): raise the model to opset {PORTABLE_OPSET} first"
        )
    if report.opset_before < PORTABLE_OPSET:
        result = _raise_opset(result, report.opset_before)
    report.opset_after = _default_opset(result)
    result.ir_version = max(result.ir_version, MIN_IR_VERSION)
    report.ir_after = result.ir_version
    report.gemm_c_added = _give_gemm_c(result)
    kept = [f for f in result.functions if not (f.domain == DOMAIN and f.name in _BUILDERS)]
    del result.functions[:]
    result.functions.extend(kept)
    for name in PORTABLE_OPS:
        if name in used:
            result.functions.append(_BUILDERS[name](report.opset_after))
            report.functions.append(name)
    return result, report


def _raise_opset(model: onnx.ModelProto, before: int) -> onnx.ModelProto:
    """The default-domain opset raised to 26 by onnx's version converter (lmul nodes and
    their import set aside meanwhile: the converter does not know the domain)."""
    try:
        from onnx import version_converter

        return version_converter.convert_version(model, PORTABLE_OPSET)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PortableError(
            f"portable bodies need ONNX opset {PORTABLE_OPSET} (BitCast) and this model imports opset "
            f"{before}; onnx's version converter could not raise it: {first_line}"
        ) from None


def make_portable(
    model: ir.Model, base_dir: str | os.PathLike[str] | None = None
) -> tuple[ir.Model, PortableReport]:
    """:func:`add_portable_functions` for an ``onnx_ir`` model (external weights stay where
    they are: ``base_dir`` is the folder they are read from)."""
    proto, report = add_portable_functions(ir.to_proto(model))
    result = ir.from_proto(proto)
    if base_dir is not None:
        ir.external_data.set_base_dir(result.graph, Path(base_dir))
    return result, report
