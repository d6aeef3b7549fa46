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
as one integer addition as wide as its operands' bit field, sign + exponent + ``m``
mantissa bits (32 for float32 at m = 23, 16 for float16 at m = 10, 12 for float32 at
m = 3), at ``int32_add * width / 32`` (an adder's energy grows linearly with its width;
the source gives 0.03 pJ for 8 bits and 0.1 pJ for 32). ``m`` is the node's
``mantissa_bits`` (for an ``lmul`` node) or ``mantissa_bits`` of :func:`energy` (for the
"L-Mul everywhere" column), else the type's own width. Assumptions (not in that source,
labelled as such in a report that uses them): bfloat16 costs what float16 costs, and the
linear width rule below 32 bits. Summation stays in floating point in both cases, as in
the paper's analysis.
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
from onnx import TensorProto

from lmul_onnx.convert import load_graph
from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD, MANTISSA_BITS, STANDARD_TO_LMUL

DEFAULT_TABLE_PJ: dict[str, float] = {
    "fp32_mul": 3.7,
    "fp32_add": 0.9,
    "fp16_mul": 1.1,
    "fp16_add": 0.4,
    "bf16_mul": 1.1,
    "bf16_add": 0.4,
    "int32_add": 0.1,
}
ASSUMED_ENTRIES = ("bf16_mul", "bf16_add")
# element type -> (table prefix, exponent bits, mantissa bits)
_TYPES = {
    TensorProto.FLOAT: ("fp32", 8, 23),
    TensorProto.FLOAT16: ("fp16", 5, 10),
    TensorProto.BFLOAT16: ("bf16", 8, 7),
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
    lmul_width: int


def load_table(path: str | os.PathLike[str] | None) -> dict[str, float]:
    """The default table, updated from a JSON or TOML file of ``{key: pJ}``."""
    table = dict(DEFAULT_TABLE_PJ)
    if path is None:
        return table
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EnergyError(f"{path}: cannot read the table ({error})") from None
    try:
        if str(path).endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as error:
        raise EnergyError(f"{path}: not a valid table ({error})") from None
    if not isinstance(data, dict):
        raise EnergyError(f"{path}: not a valid table (expected {{entry: pJ}}, got {type(data).__name__})")
    unknown = sorted(set(data) - set(table))
    if unknown:
        raise EnergyError(f"{path}: unknown entries {unknown}; known: {sorted(table)}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise EnergyError(f"{path}: {key} must be a non-negative number of pJ, got {value!r}")
        table[key] = float(value)
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


def lmul_add_width(elem: int, mantissa_bits: int | None) -> int:
    """Bits of the integer addition one L-Mul costs: sign + exponent + m mantissa bits."""
    _, exponent, own = _TYPES.get(elem, _TYPES[TensorProto.FLOAT])
    return 1 + exponent + (own if mantissa_bits is None else min(mantissa_bits, own))


def _price(
    mults: int | None, adds: int | None, elem: int, width: int, is_lmul: bool, table: Mapping[str, float]
) -> dict:
    float_key = _TYPES.get(elem, _TYPES[TensorProto.FLOAT])[0]
    if mults is None or adds is None:
        return {"original": None, "lmul": None, "as_is": None}
    original = mults * table[f"{float_key}_mul"] + adds * table[f"{float_key}_add"]
    lmul = mults * table["int32_add"] * width / 32 + adds * table[f"{float_key}_add"]
    return {"original": original, "lmul": lmul, "as_is": lmul if is_lmul else original}


def unbound_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> list[str]:
    """The symbolic dimensions of the graph inputs, in order; unknown ``dims`` keys refused."""
    names: list[str] = []
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param and dim.dim_param not in names:
                names.append(dim.dim_param)
    unknown = sorted(set(dims) - set(names))
    if unknown:
        raise EnergyError(
            f"--dim {', '.join(unknown)}: no such symbolic input dimension; "
            f"the model's are {', '.join(names) or 'none'}"
        )
    return [name for name in names if name not in dims]


def energy(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    dims: Mapping[str, int] | None = None,
    table: Mapping[str, float] | None = None,
    mantissa_bits: int | None = None,
) -> dict[str, Any]:
    """Count and price the products of a model (standard or converted).

    Returns ``{"total": {"multiplications", "additions", "energy_pj": {"original", "lmul",
    "as_is"}, "saving_percent", "unknown_nodes"}, "nodes": [...], "table_pj": {...},
    "assumptions": [...], "unbound_dims": [...]}``. Nodes whose shapes stay unknown
    (unbound symbolic dimensions, listed in ``unbound_dims``) are listed with ``null``
    counts and left out of the totals, never guessed. ``mantissa_bits`` prices the
    "L-Mul everywhere" column of standard nodes at that width (``lmul`` nodes use their
    own attribute).

    Raises:
        EnergyError: a ``dims`` name that is not a symbolic input dimension.
    """
    prices = dict(table or DEFAULT_TABLE_PJ)
    proto, _ = load_graph(model)
    unbound = unbound_dims(proto, dims or {})
    shapes = _shape_map(proto, dims or {})
    nodes: list[NodeCount] = []

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            standard = node.op_type if node.domain in ("", "ai.onnx") else None
            is_lmul = node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD
            op = LMUL_TO_STANDARD[node.op_type] if is_lmul else standard
            if op in STANDARD_TO_LMUL:
                elem = shapes.get(node.output[0], (None, TensorProto.FLOAT))[1] or TensorProto.FLOAT
                if elem in _TYPES:
                    mults, adds = _count(node, op, shapes)
                    own_bits = next((a.i for a in node.attribute if a.name == MANTISSA_BITS), None)
                    width = lmul_add_width(elem, own_bits if is_lmul else mantissa_bits)
                    nodes.append(
                        NodeCount(
                            node.name,
                            op,
                            is_lmul,
                            TensorProto.DataType.Name(elem).lower(),
                            mults,
                            adds,
                            _price(mults, adds, elem, width, is_lmul, prices),
                            width,
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
        "assumptions": _assumptions(nodes, prices),
        "unbound_dims": unbound,
    }


def _assumptions(nodes: list[NodeCount], prices: Mapping[str, float]) -> list[str]:
    """The labelled assumptions this report's figures rest on (none for a float32 model
    priced at full width)."""
    notes = []
    if any(n.element_type == "bfloat16" for n in nodes):
        notes += [
            f"{k} = {prices[k]} pJ is an assumption, not a published measurement" for k in ASSUMED_ENTRIES
        ]
    narrow = sorted({n.lmul_width for n in nodes if n.lmul_width != 32})
    if narrow:
        notes.append(
            f"an L-Mul of {', '.join(map(str, narrow))} bits is priced at int32_add x width / 32 "
            "(linear in the adder's width), an assumption"
        )
    return notes
