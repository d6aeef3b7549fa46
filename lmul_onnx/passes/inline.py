"""Inline the model-local functions whose bodies hold converted nodes.

onnxruntime cannot type a custom-domain op inside a model-local function (session
creation fails with "type inference failed" at the call site), so every call of such a
function is replaced by its body (onnx-ir's ``InlinePass``). Each inlined node keeps
where it came from in its ``metadata_props`` (see :mod:`lmul_onnx.graph`: the function
body node's stable key and name, and the call site's name), so ``validate`` can match it
with the original model and ``walk`` names it ``<call site>/<domain.function>/<node>``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from lmul_onnx import graph
from lmul_onnx.ops import DOMAIN


def functions_to_inline(model: ir.Model) -> set[ir.OperatorIdentifier]:
    """The functions whose bodies (at any depth) hold an ``lmul`` node."""
    return {
        function.identifier()
        for function in model.functions.values()
        if any(node.domain == DOMAIN for node in ir.traversal.RecursiveGraphIterator(function))
    }


def inline_blocker(model: ir.Model, function: ir.Function) -> str | None:
    """Why ``function`` cannot be inlined into ``model``, or None."""
    for domain, version in function.opset_imports.items():
        if domain in model.opset_imports and model.opset_imports[domain] != version:
            theirs = model.opset_imports[domain]
            return f"function imports {domain or 'ai.onnx'} opset {version}, the model {theirs}"
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in function.attributes.values()):
        return "function takes graph attributes"
    return None


class InlineConvertedFunctionsPass(ir.passes.InPlacePass):
    """Inline every call of a function that holds converted nodes (or of the functions
    ``targets``), recording origins."""

    def __init__(self, targets: set[ir.OperatorIdentifier] | None = None) -> None:
        super().__init__()
        self.targets = targets

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        targets = self.targets if self.targets is not None else functions_to_inline(model)
        if not targets:
            return ir.passes.PassResult(model, False)
        for entry in graph.walk(model):
            node = entry.node
            if entry.function is not None and entry.function.identifier() in targets:
                node.metadata_props[graph.ORIGIN_KEY] = entry.key
                node.metadata_props[graph.ORIGIN_NAME] = entry.name
            if (node.domain, node.op_type, node.overload) in targets:
                node.metadata_props[graph.CALL_NAME] = entry.name
        InlinePass(criteria=lambda function: function.identifier() in targets)(model)
        return ir.passes.PassResult(model, True)
