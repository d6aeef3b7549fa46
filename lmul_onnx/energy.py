"""Operation counts of MatMul / Gemm / Mul / Conv / ConvTranspose nodes, priced with an energy table.

Counts come from the shapes of :func:`lmul_onnx.graph.infer` (``lmul`` ops seen as the
standard ops they replace), for every node :func:`lmul_onnx.graph.walk` finds:

* MatMul: K multiplications and K-1 additions per output element (a dot product of
  length K); numpy matmul shape rules.
* Gemm: the same on (M, N, K), plus one addition per output for the bias C. The
  ``alpha``/``beta`` scalings are not counted.
* Mul: one multiplication per output element.
* Conv: C/group * prod(kernel) multiplications per output element (padding included, as
  an im2col product computes them) and one addition fewer, plus one per output for the
  bias. ConvTranspose: every input element times the M/group * prod(kernel) weights of
  its group, each product added once, plus the bias
  (:func:`lmul_onnx.conv.conv_operation_counts`).
* A node inside a Loop body counts once per iteration, times the trip count when it is a
  constant (an upper bound when the loop may stop early), else it is reported "per
  iteration"; inside a Scan body, times the scanned length when known. Both branches of an
  If are counted (an upper bound: one runs). A model-local function body counts once per
  call site, with that call site's shapes.

Default prices (pJ, 45 nm, Horowitz 2014, as cited by the paper): float32 multiply 3.7,
float32 add 0.9, float16 multiply 1.1, float16 add 0.4, int32 add 0.1. An L-Mul is priced
as one integer addition as wide as the bits it adds, sign + exponent + ``m`` mantissa bits
(32 for float32 at m = 23, 16 for float16 at m = 10, 12 for float32 at m = 3), at
``int32_add * width / 32`` (an adder's energy grows linearly with its width; the source
gives 0.03 pJ for 8 bits and 0.1 pJ for 32). ``m`` is the node's ``mantissa_bits`` (for an
``lmul`` node) or the ``mantissa_bits`` argument (for the "L-Mul everywhere" column of
standard nodes), else the type's own width. Assumptions (not in that source, labelled as
such in a report whose figures use them): bfloat16 costs what float16 costs, and the
linear width rule below 32 bits. Summation stays in floating point in both cases, as in
the paper's analysis.

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

import onnx_ir as ir

from lmul_onnx import graph
from lmul_onnx.conv import conv_operation_counts
from lmul_onnx.ops import MANTISSA_BITS, STANDARD_TO_LMUL
from lmul_onnx.passes.exact_products import exact_product_reason
from lmul_onnx.passes.selection import CONVERTIBLE_TYPES

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
_EXPONENT_BITS = {ir.DataType.FLOAT: 8, ir.DataType.FLOAT16: 5, ir.DataType.BFLOAT16: 8}
_PRICES = ("original", "lmul", "as_is")


class EnergyError(ValueError):
    """An energy table that cannot be used."""


@dataclass
class NodeCount:
    name: str  # qualified display name (a function body's nodes once per call site)
    op_type: str  # the standard op type
    is_lmul: bool
    element_type: str
    multiplications: int | None  # over every execution (per iteration when per_iteration)
    additions: int | None
    energy_pj: dict[str, float | None]
    key: str = ""  # stable identity (graph.NodeEntry.key)
    executions: int | None = 1  # times the node runs per model run; None: unknown trip count
    per_iteration: bool = False  # inside a Loop/Scan of unknown length: counts are per iteration
    exact: str | None = None  # why the product needs no multiplier (exact_products), if it does not
    lmul_width: int = 32  # bits of the integer addition its L-Mul costs


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


def _prod(values: tuple[int | None, ...]) -> int | None:
    return None if any(v is None for v in values) else math.prod(values)  # type: ignore[arg-type]


def _int_attribute(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return (
        int(attribute.value)
        if isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.INT
        else default
    )


def _count(entry: graph.NodeEntry, op: str, types: graph.Types) -> tuple[int | None, int | None]:
    """Multiplications and additions of one execution of a MatMul/Gemm/Mul/Conv/ConvTranspose."""
    node = entry.node
    out = types.of(node.outputs[0] if node.outputs else None, entry.calls).shape
    if out is None:
        return None, None
    outputs = _prod(out)
    if op == "Mul":
        return outputs, 0 if outputs is not None else None
    a = types.of(node.inputs[0] if node.inputs else None, entry.calls).shape
    if not a or outputs is None:
        return None, None
    has_bias = op != "MatMul" and len(node.inputs) > 2 and node.inputs[2] is not None
    if op in ("Conv", "ConvTranspose"):
        w = types.of(node.inputs[1] if len(node.inputs) > 1 else None, entry.calls).shape
        if not w or _prod(a) is None or _prod(w) is None:
            return None, None
        return conv_operation_counts(a, w, out, bias=has_bias, transpose=op == "ConvTranspose")
    k = a[0] if op == "Gemm" and _int_attribute(node, "transA", 0) else a[-1]
    if k is None:
        return None, None
    return outputs * k, outputs * max(k - 1, 0) + (outputs if has_bias else 0)


def _executions(entry: graph.NodeEntry, types: graph.Types) -> int | None:
    """How often the node runs per model run: the product of the constant trip counts
    of the enclosing Loops and scanned lengths of the enclosing Scans; None if unknown."""
    total = 1
    calls: tuple[ir.Node, ...] = ()
    for parent in entry.parents:
        if parent in entry.calls:
            calls = (*calls, parent)
            continue
        if parent.op_type == "Loop":
            trip = graph.constant_int(parent.inputs[0] if parent.inputs else None)
        elif parent.op_type == "Scan":
            scanned = _int_attribute(parent, "num_scan_inputs", 0)
            first = parent.inputs[len(parent.inputs) - scanned] if scanned else None
            axes = parent.attributes.get("scan_input_axes")
            axis = int(axes.value[0]) if isinstance(axes, ir.Attr) and axes.value else 0
            shape = types.of(first, calls).shape
            trip = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
        else:
            continue
        if trip is None:
            return None
        total *= max(trip, 0)
    return total


def lmul_add_width(dtype: ir.DataType, bits: int | None) -> int:
    """Bits of the integer addition one L-Mul costs: sign + exponent + m mantissa bits."""
    own = graph.mantissa_bits(dtype) or 23
    return 1 + _EXPONENT_BITS.get(dtype, 8) + (own if bits is None else min(bits, own))


def _price(
    mults: int | None,
    adds: int | None,
    dtype: ir.DataType,
    width: int,
    is_lmul: bool,
    table: Mapping[str, float],
) -> dict:
    float_key = f"{'bf' if dtype == ir.DataType.BFLOAT16 else 'fp'}{dtype.bitwidth}"
    if mults is None or adds is None:
        return dict.fromkeys(_PRICES)
    original = mults * table[f"{float_key}_mul"] + adds * table[f"{float_key}_add"]
    lmul = mults * table["int32_add"] * width / 32 + adds * table[f"{float_key}_add"]
    return {"original": original, "lmul": lmul, "as_is": lmul if is_lmul else original}


def unbound_dims(model: ir.Model, dims: Mapping[str, int]) -> list[str]:
    """The symbolic dimensions of the graph inputs not bound by ``dims``, in order.

    Raises:
        EnergyError: a name in ``dims`` that is not a symbolic input dimension.
    """
    names: list[str] = []
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None:
            continue
        for dim in value.shape:
            if isinstance(dim, ir.SymbolicDim) and dim.value and dim.value not in names:
                names.append(dim.value)
    unknown = sorted(set(dims) - set(names))
    if unknown:
        raise EnergyError(
            f"--dim {', '.join(unknown)}: no such symbolic input dimension; "
            f"the model's are {', '.join(names) or 'none'}"
        )
    return [name for name in names if name not in dims]


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


def _saving(nodes: list[NodeCount], price: str) -> float:
    original = sum(n.energy_pj["original"] for n in nodes)
    return 100 * (1 - sum(n.energy_pj[price] for n in nodes) / original) if original else 0.0


def count(
    model: ir.Model,
    types: graph.Types,
    table: Mapping[str, float] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    mantissa_bits: int | None = None,
) -> dict[str, Any]:
    """The energy report of a loaded model whose types are ``types`` (see :func:`energy`)."""
    prices = dict(table or DEFAULT_TABLE_PJ)
    nodes: list[NodeCount] = []
    for entry in graph.walk(model, expand_calls=True):
        op = graph.standard_op(entry.node)
        if op not in STANDARD_TO_LMUL:
            continue
        node = entry.node
        probes = [*node.outputs[:1], *node.inputs[:2]]
        dtype = next(
            (t for p in probes if (t := types.of(p, entry.calls).dtype) is not None), ir.DataType.FLOAT
        )
        if dtype not in CONVERTIBLE_TYPES:
            continue
        is_lmul = node.domain != "" and node.domain != "ai.onnx"
        mults, adds = _count(entry, op, types)
        own = node.attributes.get(MANTISSA_BITS)
        own_bits = int(own.value) if isinstance(own, ir.Attr) and own.type == ir.AttributeType.INT else None
        width = lmul_add_width(dtype, own_bits if is_lmul else mantissa_bits)
        executions = _executions(entry, types)
        if mults is not None and adds is not None and executions is not None:
            mults, adds = mults * executions, adds * executions
        nodes.append(
            NodeCount(
                entry.name,
                op,
                is_lmul,
                graph.dtype_name(dtype),
                mults,
                adds,
                _price(mults, adds, dtype, width, is_lmul, prices),
                entry.key,
                executions,
                executions is None,
                exact_product_reason(node),
                width,
            )
        )
    known = [n for n in nodes if n.multiplications is not None]
    converted = [n for n in known if n.is_lmul]
    exact = [n for n in known if n.exact]
    return {
        "total": {
            "multiplications": sum(n.multiplications for n in known),
            "additions": sum(n.additions for n in known),
            "energy_pj": {key: sum(n.energy_pj[key] for n in known) for key in _PRICES},
            "saving_percent": _saving(known, "as_is"),
            "lmul_saving_percent": _saving(known, "lmul"),
            "converted_multiplications": sum(n.multiplications for n in converted),
            "converted_saving_percent": _saving(converted, "lmul"),
            "unknown_nodes": len(nodes) - len(known),
            "per_iteration_nodes": sum(1 for n in known if n.per_iteration),
            "exact_products": {
                "nodes": len(exact),
                "multiplications": sum(n.multiplications for n in exact),
                "energy_pj": {key: sum(n.energy_pj[key] for n in exact) for key in _PRICES},
            },
        },
        "per_op": {
            op: {
                "nodes": sum(1 for n in known if n.op_type == op),
                "multiplications": sum(n.multiplications for n in known if n.op_type == op),
                "energy_pj": {k: sum(n.energy_pj[k] for n in known if n.op_type == op) for k in _PRICES},
            }
            for op in STANDARD_TO_LMUL
        },
        "nodes": [n.__dict__ for n in nodes],
        "table_pj": prices,
        "assumptions": _assumptions(nodes, prices),
        "unbound_dims": unbound_dims(model, dims or {}),
    }


def energy(
    model: str | os.PathLike[str] | Any,
    *,
    dims: Mapping[str, int] | None = None,
    table: Mapping[str, float] | None = None,
    mantissa_bits: int | None = None,
) -> dict[str, Any]:
    """Count and price the products of a model (standard or converted): a path, an
    ``onnx.ModelProto`` or an ``onnx_ir.Model``.

    Returns ``{"total": {"multiplications", "additions", "energy_pj": {"original", "lmul",
    "as_is"}, "saving_percent" (the model as it is, over all its multiplications),
    "lmul_saving_percent" (were every product an L-Mul), "converted_multiplications",
    "converted_saving_percent" (over the converted products only), "unknown_nodes",
    "per_iteration_nodes"}, "per_op": {...}, "nodes": [...], "table_pj": {...},
    "assumptions": [...], "unbound_dims": [...]}``. Nodes whose shapes stay unknown
    (unbound symbolic dimensions, named in ``unbound_dims``) are listed with ``null``
    counts and left out of the totals, never guessed; nodes in a loop of unknown trip count
    are counted for one iteration and flagged ``per_iteration``. ``mantissa_bits`` prices
    the "L-Mul everywhere" column of standard nodes at that width (``lmul`` nodes use their
    own ``mantissa_bits``); ``assumptions`` names the assumptions the figures rest on.

    Raises:
        lmul_onnx.ModelLoadError: a missing, unreadable or invalid model.
        EnergyError: a name in ``dims`` that is not a symbolic input dimension.
    """
    loaded, _ = graph.load(model)
    unbound_dims(loaded, dims or {})
    return count(loaded, graph.infer(loaded, dims or {}), table, dims=dims, mantissa_bits=mantissa_bits)
