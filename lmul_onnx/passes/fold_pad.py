"""The pass that folds zero ``Pad`` nodes into the ``pads`` of the ``LMulConv`` nodes they feed.

onnxruntime fuses a ``Pad`` into its own ``Conv`` but not into a custom op, so a converted
CNN exported with explicit padding (EfficientNet's "static same padding") copies every
padded activation once more. A ``Pad`` is folded only when the result is provably the same
model (SPEC section 3: ``LMulConv`` has every rule of ONNX ``Conv``, whose ``pads`` are
zeros, and the kernel computes a padded position exactly as a zero of the input):

* the ``Pad`` is a standard op in mode ``constant`` whose value is +0 (attribute ``value``
  before opset 11, the ``constant_value`` input from 11; absent means 0);
* its pads are constants (attribute ``paddings`` in opset 1, ``pads`` in opsets 2 to 10,
  the ``pads`` input from 11, with the optional ``axes`` input from 18), evaluated exactly
  when computed from constants by shape ops (as torch exports them), non-negative and zero
  on the batch and channel axes;
* its output is no graph output and feeds only input ``X`` of ``LMulConv`` nodes (that
  are, or on a dry run would be) in the same graph, each with ``auto_pad`` ``NOTSET``.

Each such ``LMulConv`` then reads the ``Pad``'s input with the spatial pads added to its
own; the ``Pad`` and the constant nodes that only computed its pads and value are removed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from lmul_onnx import graph
from lmul_onnx.ops import DOMAIN

_STANDARD = ("", "ai.onnx")
# Ops whose outputs are no larger than their inputs (ConstantOfShape: checked first), through
# which a constant pads tensor is evaluated; all exact on integers.
_SHAPE_OPS = frozenset(
    {
        "Constant",
        "ConstantOfShape",
        "Concat",
        "Reshape",
        "Slice",
        "Transpose",
        "Cast",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Gather",
        "Flatten",
    }
)
_MAX_NODES = 64
_MAX_ELEMENTS = 4096


@dataclass
class FoldPadResult:
    """The qualified names of the ``Pad`` nodes folded (or, on a dry run, that would be)."""

    folded: list[str] = field(default_factory=list)


def _evaluate(value: ir.Value, opset: int) -> np.ndarray | None:
    """The exact value of ``value`` when it is an initializer, or computed by :data:`_SHAPE_OPS`
    nodes from initializers alone (a small integer tensor); otherwise ``None``."""
    if value.is_graph_input():  # an initializer that is also an input can be fed another value
        return None
    if value.const_value is not None:
        array = np.asarray(value.const_value.numpy())
        return array if array.size <= _MAX_ELEMENTS else None
    order: list[ir.Node] = []
    seen: set[int] = set()

    def visit(current: ir.Value) -> bool:
        if current.is_graph_input():
            return False
        if current.const_value is not None:
            return current.const_value.size <= _MAX_ELEMENTS
        producer = current.producer()
        if producer is None or producer.domain not in _STANDARD or producer.op_type not in _SHAPE_OPS:
            return False
        if id(producer) in seen:
            return True
        seen.add(id(producer))
        if len(seen) > _MAX_NODES or any(v is not None and not visit(v) for v in producer.inputs):
            return False
        order.append(producer)
        return True

    if not visit(value):
        return None
    known: dict[int, np.ndarray] = {}

    def array_of(current: ir.Value) -> np.ndarray:
        if current.const_value is not None:
            return np.asarray(current.const_value.numpy())
        return known[id(current)]

    for node in order:
        inputs = [array_of(v) if v is not None else None for v in node.inputs]
        if node.op_type == "ConstantOfShape" and (
            inputs[0] is None or inputs[0].dtype.kind not in "iu" or np.prod(inputs[0]) > _MAX_ELEMENTS
        ):
            return None
        outputs = _run_node(node, inputs, opset)
        if outputs is None or any(o.size > _MAX_ELEMENTS for o in outputs):
            return None
        for output_value, array in zip(node.outputs, outputs, strict=False):
            known[id(output_value)] = array
    return known.get(id(value))


def _run_node(node: ir.Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """One standard node on constant inputs, in onnx's reference evaluator."""
    names = [f"i{i}" if array is not None else "" for i, array in enumerate(inputs)]
    outputs = [f"o{i}" for i in range(len(node.outputs))]
    proto = onnx.helper.make_node(node.op_type, names, outputs)
    proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
    feeds = {name: array for name, array in zip(names, inputs, strict=True) if array is not None}
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [proto],
            "pads",
            [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in feeds.items()],
            [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
        ),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
    )  # fmt: skip
    try:
        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]
    except Exception:  # any failure just leaves the Pad in place
        return None


def _is_positive_zero(values: np.ndarray | None) -> bool:
    """True for a scalar (or one-element) +0 of any numeric type, bfloat16 included."""
    if values is None or values.size > 1:
        return False
    try:
        flat = values.astype(np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return bool(np.all(flat == 0) and not np.any(np.signbit(flat)))


def _string(node: ir.Node, name: str, default: str) -> str:
    attribute = node.attributes.get(name)
    if attribute is None:
        return default
    value = attribute.value
    return value.decode() if isinstance(value, bytes) else str(value)


def _ints_attribute(node: ir.Node, name: str) -> list[int] | None:
    attribute = node.attributes.get(name)
    if attribute is None or attribute.type != ir.AttributeType.INTS:
        return None
    return [int(v) for v in attribute.value]


def _pads_and_value(
    node: ir.Node, opset: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(pads, axes or None, padding value) of a ``Pad`` node in ``opset``; pads ``None``
    when they are not constant."""
    if opset < 11:
        pads = _ints_attribute(node, "paddings" if opset < 2 else "pads")
        value = node.attributes.get("value")
        fill = np.zeros(1) if value is None else np.asarray([value.value], dtype=np.float64)
        return (None if pads is None else np.asarray(pads)), None, fill
    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    pads = None if inputs[1] is None else _evaluate(inputs[1], opset)
    axes = None
    if opset >= 18 and inputs[3] is not None:
        axes = _evaluate(inputs[3], opset)
        if axes is None:
            return None, None, None
    fill = np.zeros(1) if inputs[2] is None else _evaluate(inputs[2], opset)
    return pads, axes, fill


def _rank(pad: ir.Node, consumers: list[ir.Node]) -> int | None:
    """The rank of the padded tensor: from its shape, else from a consumer's constant W."""
    data = pad.inputs[0] if pad.inputs else None
    if data is not None and data.shape is not None:
        return len(data.shape)
    for consumer in consumers:
        weights = consumer.inputs[1] if len(consumer.inputs) > 1 else None
        if weights is not None and weights.const_value is not None:
            return len(weights.const_value.shape)
    return None


def spatial_pads(pad: ir.Node, consumers: list[ir.Node], opset: int) -> list[int] | None:
    """The pads ``[begin..., end...]`` on the spatial axes of ``pad`` when it pads only
    those, with non-negative amounts, by +0 in mode ``constant``; otherwise ``None``."""
    if _string(pad, "mode", "constant") != "constant" or not pad.inputs or pad.inputs[0] is None:
        return None
    pads, axes, fill = _pads_and_value(pad, opset)
    if pads is None or pads.ndim != 1 or pads.dtype.kind not in "iu" or not _is_positive_zero(fill):
        return None
    rank = _rank(pad, consumers)
    if axes is None:
        rank = pads.size // 2 if rank is None else rank
        axes = np.arange(rank)
    if (
        rank is None
        or rank < 3
        or axes.ndim != 1
        or axes.dtype.kind not in "iu"
        or pads.size != 2 * axes.size
    ):
        return None
    normalized = [int(a) + rank if a < 0 else int(a) for a in axes]
    if len(set(normalized)) != len(normalized) or not all(0 <= a < rank for a in normalized):
        return None
    full = [0] * (2 * rank)
    for i, axis in enumerate(normalized):
        full[axis], full[rank + axis] = int(pads[i]), int(pads[axes.size + i])
    if any(p < 0 for p in full) or any(full[a] or full[rank + a] for a in (0, 1)):
        return None
    return full[2:rank] + full[rank + 2 :]


def _conv_pads(conv: ir.Node, spatial: int) -> list[int] | None:
    """The explicit pads of an ``auto_pad`` NOTSET conv (zeros when absent); else ``None``."""
    if _string(conv, "auto_pad", "NOTSET") != "NOTSET":
        return None
    if "pads" not in conv.attributes:
        return [0] * (2 * spatial)
    pads = _ints_attribute(conv, "pads")
    return pads if pads is not None and len(pads) == 2 * spatial and min(pads, default=0) >= 0 else None


def _remove_dead(node: ir.Node) -> None:
    """Remove ``node`` and then every producer left without uses by the removal."""
    owner = node.graph
    inputs = [v for v in node.inputs if v is not None]
    owner.remove(node, safe=True)
    for value in inputs:
        producer = value.producer()
        if (
            producer is not None
            and producer.graph is owner
            and producer.domain in _STANDARD
            and producer.op_type in _SHAPE_OPS
            and not any(out.uses() or out.is_graph_output() for out in producer.outputs)
        ):
            _remove_dead(producer)


class FoldPadPass(ir.passes.InPlacePass):
    """Fold zero ``Pad`` nodes into the ``pads`` of the ``LMulConv`` nodes they feed.

    ``converted``: nodes a rewrite converted (or, on a dry run, would convert) into
    ``LMulConv``, counted as such; with ``dry_run`` nothing changes and ``result`` lists
    what would be folded.
    """

    def __init__(self, converted: Collection[ir.Node] = (), *, dry_run: bool = False) -> None:
        super().__init__()
        self.converted = {id(node) for node in converted}
        self.dry_run = dry_run
        self.result = FoldPadResult()

    def _is_lmul_conv(self, node: ir.Node) -> bool:
        return (node.domain == DOMAIN and node.op_type == "LMulConv") or id(node) in self.converted

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pads_nodes = [e for e in graph.walk(model) if e.node.op_type == "Pad" and e.node.domain in _STANDARD]
        for entry in pads_nodes:
            pad = entry.node
            imports = entry.function.opset_imports if entry.function is not None else model.opset_imports
            opset = imports.get("", imports.get("ai.onnx"))
            output = pad.outputs[0]
            uses = list(output.uses())
            if opset is None or not uses or output.is_graph_output():
                continue
            consumers = [use.node for use in uses]
            if any(
                use.idx != 0 or not self._is_lmul_conv(use.node) or use.node.graph is not pad.graph
                for use in uses
            ):
                continue
            spatial = spatial_pads(pad, consumers, opset)
            if spatial is None:
                continue
            own = [_conv_pads(conv, len(spatial) // 2) for conv in consumers]
            if any(p is None for p in own):
                continue
            self.result.folded.append(entry.name)
            if self.dry_run:
                continue
            for conv, pads in zip(consumers, own, strict=True):
                total = [a + b for a, b in zip(pads, spatial, strict=True)]
                conv.attributes["pads"] = ir.AttrInt64s("pads", total)
                conv.replace_input_with(0, pad.inputs[0])
            _remove_dead(pad)
        return ir.passes.PassResult(model, bool(self.result.folded) and not self.dry_run)
