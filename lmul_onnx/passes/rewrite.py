"""The in-place pass that turns selected MatMul/Gemm/Mul/Conv/ConvTranspose nodes into ``lmul`` ops.

A 1:1 swap: the node keeps its name, inputs, outputs and attributes; only its domain
and op type change (plus ``mantissa_bits`` when one is asked for). Every node that
:func:`lmul_onnx.graph.walk` yields is examined: the main graph, every subgraph
(If/Loop/Scan bodies) and every model-local function, whose body is typed from its call
sites (:func:`lmul_onnx.graph.infer`). onnxruntime cannot type the outputs of a call to
a function whose body holds custom-domain ops, so the pass declares those outputs' types
(value_info) at every call site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_ir as ir

from lmul_onnx import graph
from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION, MANTISSA_BITS, STANDARD_TO_LMUL
from lmul_onnx.passes.selection import Decision, SelectionOptions, decide


@dataclass(frozen=True)
class NodeRecord:
    """What happened to one candidate node."""

    name: str  # qualified display name (graph.NodeEntry.name)
    op_type: str  # the standard op type (or the lmul op for already converted nodes)
    location: str  # "graph", "graph/<node>/<attribute>" for subgraphs, "function:<domain.name>"
    decision: Decision
    new_op_type: str | None = None
    key: str = ""  # stable identity (graph.NodeEntry.key): a plan's node identity


@dataclass
class RewriteResult:
    """All candidate nodes, in graph order."""

    records: list[NodeRecord] = field(default_factory=list)

    @property
    def converted(self) -> list[NodeRecord]:
        return [r for r in self.records if r.decision.convert]


def element_types(entry: graph.NodeEntry, types: graph.Types) -> set[ir.DataType | None]:
    """The element type(s) of a candidate node: its output's, else its operands'."""
    probes = [*entry.node.outputs[:1], *entry.node.inputs[:2]]
    for probe in probes:
        found = types.dtypes(probe, entry.function)
        if None not in found:
            return found
    return types.dtypes(probes[0] if probes else None, entry.function)


class LMulRewritePass(ir.passes.InPlacePass):
    """Rewrite the selected nodes of a model into the ``lmul`` domain.

    With ``dry_run=True`` nothing changes; ``result`` lists what would. ``types`` are the
    model's inferred types (:func:`lmul_onnx.graph.infer`), inferred here when not given.
    """

    def __init__(
        self,
        options: SelectionOptions,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        types: graph.Types | None = None,
        on_convert: Callable[[ir.Node, NodeRecord], None] | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.dry_run = dry_run
        self.progress = progress
        self.types = types
        self.on_convert = on_convert  # called with each converted node (e.g. passes.offsets)
        self.result = RewriteResult()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        types = self.types if self.types is not None else graph.infer(model)
        entries = list(graph.walk(model))
        for index, entry in enumerate(entries):
            if self.progress is not None:
                self.progress(index + 1, len(entries))
            node = entry.node
            if node.op_type not in STANDARD_TO_LMUL and node.domain != DOMAIN:
                continue
            decision = decide(node, self.options, element_types(entry, types), entry.name, entry.key)
            new_op = STANDARD_TO_LMUL.get(node.op_type) if decision.convert else None
            record = NodeRecord(entry.name, node.op_type, entry.location, decision, new_op, entry.key)
            self.result.records.append(record)
            if decision.convert and self.on_convert is not None:
                self.on_convert(node, record)
            if decision.convert and not self.dry_run:
                node.domain = DOMAIN
                node.op_type = STANDARD_TO_LMUL[node.op_type]
                if decision.mantissa_bits is not None:
                    node.attributes[MANTISSA_BITS] = ir.AttrInt64(MANTISSA_BITS, decision.mantissa_bits)
        if self.options.plan is not None:
            unknown = sorted(set(self.options.planned()) - {r.key for r in self.result.records})
            if unknown:
                raise ValueError(
                    f"the plan converts {len(unknown)} node(s) this model does not have, e.g. {unknown[0]!r}"
                )
        modified = bool(self.result.converted) and not self.dry_run
        if modified:
            model.opset_imports[DOMAIN] = DOMAIN_VERSION
            converted = {e.function.identifier() for e in entries if e.function and e.node.domain == DOMAIN}
            for identifier in converted:
                model.functions[identifier].opset_imports[DOMAIN] = DOMAIN_VERSION
            _declare_call_outputs(model, converted, types)
        return ir.passes.PassResult(model, modified)


def _declare_call_outputs(model: ir.Model, functions: set[ir.OperatorIdentifier], types: graph.Types) -> None:
    """Give the outputs of every call to ``functions`` their inferred type and shape."""
    for entry in graph.walk(model):
        node = entry.node
        if (node.domain, node.op_type, node.overload) not in functions or entry.function is not None:
            continue
        for value in node.outputs:
            inferred = types.of(value)
            if value.dtype is None and inferred.dtype is not None:
                value.dtype = inferred.dtype
            if value.shape is None and inferred.shape is not None:
                value.shape = ir.Shape(list(inferred.shape))
