"""Operation counts of MatMul / Gemm / Mul nodes, priced with an energy table.

Counts come from the shapes (ONNX shape inference on a copy of the graph without its
weights, with ``lmul`` ops seen as the standard ops they replace):

* MatMul: K multiplications and K-1 additions per output element (a dot product of
  length K); numpy matmul shape rules.
* Gemm: the same on (M, N, K), plus one addition per output for the bias C. The
  ``alpha``/``beta`` scalings are not counted.
* Mul: one multiplication per output element.

Default prices (pJ, 45 nm, Horowitz 2014, as cited by the paper): float32 multiply 3.7,
float32 add 0.9, float16 multiply 1.1, float16 add 0.4, int32 add 0.1. An L-Mul is priced
as one integer addition as wide as the operands: int32 for float32. Assumptions (not in
that source, labelled as such in every report): bfloat16 costs what float16 costs, and a
16-bit integer add costs 0.05 pJ (half of int32, between the source's 8- and 32-bit
adds). Summation stays in floating point in both cases, as in the paper's analysis.

Products whose constant operand is exactly 0, ±2^k or a 0/1 mask
(:mod:`lmul_onnx.passes.exact_products`) need no multiplier at all; they are marked
(``exact``: the reason) and totalled separately under ``exact_products``, priced like
the others so that the totals stay comparable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from onnx import TensorProto

from lmul_onnx.convert import load_graph, load_model
from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD, STANDARD_TO_LMUL
from lmul_onnx.passes.exact_products import exact_product_reason

DEFAULT_TABLE_PJ: dict[str, float] = {
    "fp32_mul": 3.7,
    "fp32_add": 0.9,
    "fp16_mul": 1.1,
    "fp16_add": 0.4,
    "bf16_mul": 1.1,
    "bf16_add": 0.4,
    "int32_add": 0.1,
    "int16_add": 0.05,
}
ASSUMED_ENTRIES = ("bf16_mul", "bf16_add", "int16_add")
_TYPE_KEYS = {
    TensorProto.FLOAT: ("fp32", "int32"),
    TensorProto.FLOAT16: ("fp16", "int16"),
    TensorProto.BFLOAT16: ("bf16", "int16"),
}


class EnergyError(ValueError):
    """An energy table that cannot be used."""


@dataclass
class NodeCount:
    name: str
    op_type: str  # the standard op type
    is_lmul: bool
    element_type: str
    multiplications: int | None
    additions: int | None
    energy_pj: dict[str, float | None]
    exact: str | None = None  # why the product needs no multiplier, if it does not


def _exact_products(model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, str]:
    """``{node name: reason}`` of the products by exact powers of two or 0/1 masks."""
    ir_model, _ = load_model(model)
    reasons = {}
    for node in ir.traversal.RecursiveGraphIterator(ir_model.graph):
        is_product = node.op_type in STANDARD_TO_LMUL and node.domain in ("", "ai.onnx")
        if (is_product or (node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD)) and node.name:
            reason = exact_product_reason(node)
            if reason is not None:
                reasons[node.name] = reason
    return reasons


def load_table(path: str | os.PathLike[str] | None) -> dict[str, float]:
    """The default table, updated from a JSON or TOML file of ``{key: pJ}``."""
    table = dict(DEFAULT_TABLE_PJ)
    if path is None:
        return table
    text = Path(path).read_text()
    try:
        if str(path).endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as error:
        raise EnergyError(f"{path}: not a valid table ({error})") from None
    unknown = sorted(set(data) - set(table))
    if unknown:
        raise EnergyError(f"{path}: unknown entries {unknown}; known: {sorted(table)}")
    table.update({k: float(v) for k, v in data.items()})
    return table


def _prepared_copy(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """A copy with bound input dimensions, no declared intermediate shapes (exporters often
    use placeholder symbols there) and ``lmul`` ops seen as the standard ops they replace."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for output in copy.graph.output:
        output.type.tensor_type.ClearField("shape")
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    for node in copy.graph.node:
        if node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD:
            node.domain, node.op_type = "", LMUL_TO_STANDARD[node.op_type]
            for attribute in [a for a in node.attribute if a.name == "mantissa_bits"]:
                node.attribute.remove(attribute)
    return copy


def _infer(copy: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference (it follows shapes through Shape/Reshape
    arithmetic that ONNX's own inference loses); ONNX's inference on a weight-free copy
    when it fails (e.g. weights stored externally)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(copy, auto_merge=True)
    except Exception:
        pass
    for initializer in copy.graph.initializer:  # keep shapes, drop data
        if initializer.name not in {i.name for i in copy.graph.input}:
            copy.graph.input.append(
                onnx.helper.make_tensor_value_info(
                    initializer.name, initializer.data_type, list(initializer.dims)
                )
            )
    del copy.graph.initializer[:]
    return onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)


def _shape_map(model: onnx.ModelProto, dims: Mapping[str, int]) -> dict[str, tuple[list[int | None], int]]:
    """value name -> (shape with None for unknown dims, element type)."""
    inferred = _infer(_prepared_copy(model, dims))
    shapes = {}
    for info in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            shapes[info.name] = (shape, tensor.elem_type)
    for initializer in model.graph.initializer:
        shapes.setdefault(initializer.name, (list(initializer.dims), initializer.data_type))
    return shapes


def _prod(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else math.prod(values)  # type: ignore[arg-type]


def _count(node: onnx.NodeProto, op: str, shapes: dict) -> tuple[int | None, int | None]:
    out = shapes.get(node.output[0], (None, 0))[0]
    if out is None:
        return None, None
    outputs = _prod(out)
    if op == "Mul":
        return outputs, 0 if outputs is not None else None
    a = shapes.get(node.input[0], (None, 0))[0]
    if not a:
        return None, None
    if op == "MatMul":
        k = a[-1]
        if outputs is None or k is None:
            return None, None
        return outputs * k, outputs * max(k - 1, 0)
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    k = a[0] if trans_a else a[-1]
    if outputs is None or k is None:
        return None, None
    has_bias = len(node.input) > 2 and bool(node.input[2])
    return outputs * k, outputs * max(k - 1, 0) + (outputs if has_bias else 0)


def _price(mults: int | None, adds: int | None, elem: int, is_lmul: bool, table: Mapping[str, float]) -> dict:
    float_key, int_key = _TYPE_KEYS.get(elem, ("fp32", "int32"))
    if mults is None or adds is None:
        return {"original": None, "lmul": None, "as_is": None}
    original = mults * table[f"{float_key}_mul"] + adds * table[f"{float_key}_add"]
    lmul = mults * table[f"{int_key}_add"] + adds * table[f"{float_key}_add"]
    return {"original": original, "lmul": lmul, "as_is": lmul if is_lmul else original}


def energy(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    dims: Mapping[str, int] | None = None,
    table: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Count and price the products of a model (standard or converted).

    Returns ``{"total": {"multiplications", "additions", "energy_pj": {"original", "lmul",
    "as_is"}, "saving_percent", "unknown_nodes"}, "nodes": [...], "table_pj": {...},
    "assumptions": [...]}``. Nodes whose shapes stay unknown (unbound symbolic dimensions)
    are listed with ``null`` counts and left out of the totals, never guessed.
    """
    prices = dict(table or DEFAULT_TABLE_PJ)
    proto, _ = load_graph(model)
    shapes = _shape_map(proto, dims or {})
    exact = _exact_products(model)
    nodes: list[NodeCount] = []

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            standard = node.op_type if node.domain in ("", "ai.onnx") else None
            is_lmul = node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD
            op = LMUL_TO_STANDARD[node.op_type] if is_lmul else standard
            if op in STANDARD_TO_LMUL:
                elem = shapes.get(node.output[0], (None, TensorProto.FLOAT))[1] or TensorProto.FLOAT
                if elem in _TYPE_KEYS:
                    mults, adds = _count(node, op, shapes)
                    nodes.append(
                        NodeCount(
                            node.name,
                            op,
                            is_lmul,
                            TensorProto.DataType.Name(elem).lower(),
                            mults,
                            adds,
                            _price(mults, adds, elem, is_lmul, prices),
                            exact.get(node.name),
                        )
                    )
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(proto.graph)
    known = [n for n in nodes if n.multiplications is not None]
    totals = {key: sum(n.energy_pj[key] for n in known) for key in ("original", "lmul", "as_is")}
    saving = 100 * (1 - totals["as_is"] / totals["original"]) if totals["original"] else 0.0
    exact_known = [n for n in known if n.exact]
    return {
        "total": {
            "multiplications": sum(n.multiplications for n in known),
            "additions": sum(n.additions for n in known),
            "energy_pj": totals,
            "saving_percent": saving,
            "lmul_saving_percent": 100 * (1 - totals["lmul"] / totals["original"])
            if totals["original"]
            else 0.0,
            "unknown_nodes": len(nodes) - len(known),
            "exact_products": {
                "nodes": len(exact_known),
                "multiplications": sum(n.multiplications for n in exact_known),
                "energy_pj": {
                    key: sum(n.energy_pj[key] for n in exact_known) for key in ("original", "lmul", "as_is")
                },
            },
        },
        "per_op": {
            op: {
                "nodes": sum(1 for n in known if n.op_type == op),
                "multiplications": sum(n.multiplications for n in known if n.op_type == op),
                "energy_pj": {
                    k: sum(n.energy_pj[k] for n in known if n.op_type == op)
                    for k in ("original", "lmul", "as_is")
                },
            }
            for op in STANDARD_TO_LMUL
        },
        "nodes": [n.__dict__ for n in nodes],
        "table_pj": prices,
        "assumptions": [
            f"{k} = {prices[k]} pJ is an assumption, not a published measurement" for k in ASSUMED_ENTRIES
        ],
    }
