"""The in-place pass that turns selected MatMul/Gemm/Mul nodes into ``lmul`` ops.

A 1:1 swap: the node keeps its name, inputs, outputs and attributes; only its domain
and op type change (plus ``mantissa_bits`` when one is asked for). The main graph, every
subgraph (If/Loop/Scan bodies) and every model-local function are walked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnx_ir as ir

from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION, MANTISSA_BITS, STANDARD_TO_LMUL
from lmul_onnx.passes.element_types import element_type_of, infer_element_types
from lmul_onnx.passes.selection import Decision, SelectionOptions, decide


@dataclass(frozen=True)
class NodeRecord:
    """What happened to one candidate node."""

    name: str
    op_type: str  # the standard op type (or the lmul op for already converted nodes)
    location: str  # "graph", "graph/<node>/<attribute>" for subgraphs, "function:<name>"
    decision: Decision
    new_op_type: str | None = None

    @property
    def key(self) -> str:
        """The node's identity in a plan: :func:`node_key`."""
        return node_key(self.name, self.location)


def node_key(name: str, location: str) -> str:
    """A node's identity in a plan: its name in the main graph, ``<location>/<name>`` in a
    subgraph or function (names need only be unique within one graph)."""
    return name if location == "graph" else f"{location}/{name}"


@dataclass
class RewriteResult:
    """All candidate nodes, in graph order."""

    records: list[NodeRecord] = field(default_factory=list)

    @property
    def converted(self) -> list[NodeRecord]:
        return [r for r in self.records if r.decision.convert]


def _nodes_with_location(model: ir.Model) -> Iterator[tuple[ir.Node, str, str]]:
    """Yield (node, location, type scope) for every node, subgraphs and functions included."""

    def walk(graph: ir.Graph | ir.Function, location: str, scope: str) -> Iterator[tuple[ir.Node, str, str]]:
        for node in graph:
            yield node, location, scope
            for attribute in node.attributes.values():
                if attribute.type == ir.AttributeType.GRAPH:
                    yield from walk(attribute.value, f"{location}/{node.name}/{attribute.name}", scope)
                elif attribute.type == ir.AttributeType.GRAPHS:
                    for i, subgraph in enumerate(attribute.value):
                        yield from walk(subgraph, f"{location}/{node.name}/{attribute.name}[{i}]", scope)

    yield from walk(model.graph, "graph", "")
    for function in model.functions.values():
        yield from walk(function, f"function:{function.name}", f"{function.domain}::{function.name}::")


class LMulRewritePass(ir.passes.InPlacePass):
    """Rewrite the selected nodes of a model into the ``lmul`` domain.

    With ``dry_run=True`` nothing changes; ``result`` lists what would.
    """

    def __init__(
        self,
        options: SelectionOptions,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.dry_run = dry_run
        self.progress = progress
        self.result = RewriteResult()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        types = infer_element_types(model)
        nodes = list(_nodes_with_location(model))
        for index, (node, location, scope) in enumerate(nodes):
            if self.progress is not None:
                self.progress(index + 1, len(nodes))
            candidate = node.op_type in STANDARD_TO_LMUL or node.domain == DOMAIN
            if not candidate:
                continue
            name = node.name or f"<unnamed {node.op_type} #{index}>"
            probe = node.outputs[0] if node.outputs else None
            element_type = element_type_of(probe, types, scope)
            for value in node.inputs[:2]:
                element_type = (
                    element_type if element_type is not None else element_type_of(value, types, scope)
                )
            decision = decide(node, self.options, element_type, name, node_key(name, location))
            new_op = STANDARD_TO_LMUL.get(node.op_type) if decision.convert else None
            self.result.records.append(NodeRecord(name, node.op_type, location, decision, new_op))
            if decision.convert and not self.dry_run:
                node.domain = DOMAIN
                node.op_type = STANDARD_TO_LMUL[node.op_type]
                if decision.mantissa_bits is not None:
                    node.attributes[MANTISSA_BITS] = ir.AttrInt64(MANTISSA_BITS, decision.mantissa_bits)
        if self.options.plan is not None:
            unknown = sorted(set(self.options.planned_bits()) - {r.key for r in self.result.records})
            if unknown:
                raise ValueError(
                    f"the plan converts {len(unknown)} node(s) this model does not have, e.g. {unknown[0]!r}"
                )
        modified = bool(self.result.converted) and not self.dry_run
        if modified:
            model.opset_imports[DOMAIN] = DOMAIN_VERSION
            for function in model.functions.values():
                if any(n.domain == DOMAIN for n in ir.traversal.RecursiveGraphIterator(function)):
                    function.opset_imports[DOMAIN] = DOMAIN_VERSION
        return ir.passes.PassResult(model, modified)
