"""Element types of every value of a model, from ONNX type inference.

Exported graphs rarely carry the type of their intermediate values, yet only
floating-point products may become L-Mul. ONNX's type inference supplies them; it runs
on a copy of the graph *without* the weights' data, so a model of any size costs little
memory, and the model itself is left exactly as it was (no value_info is added).
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

logger = logging.getLogger(__name__)


def _graph_skeleton(model: ir.Model) -> onnx.ModelProto:
    """Serialise ``model`` with every initializer turned into a typed graph input."""
    graph = model.graph
    saved_inputs = list(graph.inputs)
    saved_initializers = dict(graph.initializers)
    try:
        for value in saved_initializers.values():
            if value.const_value is not None:
                value.shape = value.shape or value.const_value.shape
                value.dtype = value.dtype or value.const_value.dtype
            if value not in graph.inputs:
                graph.inputs.append(value)
        graph.initializers.clear()
        return ir.serde.serialize_model(model)
    finally:
        graph.inputs.clear()
        graph.inputs.extend(saved_inputs)
        graph.initializers.clear()
        for value in saved_initializers.values():
            graph.register_initializer(value)


def _collect(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _collect(attribute.g, types)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _collect(subgraph, types)


def infer_element_types(model: ir.Model) -> dict[str, int]:
    """Map value names to ONNX element types (``onnx.TensorProto.FLOAT``, ...).

    Values whose type cannot be inferred (e.g. outputs of unknown custom ops) are
    absent. Inference failures are logged and leave only the declared types.
    """
    proto = _graph_skeleton(model)
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False)
    except Exception as error:  # inference is best-effort: fall back to declared types
        logger.warning("ONNX type inference failed (%s); using declared types only", error)
        inferred = proto
    _collect(inferred.graph, types)
    for function in inferred.functions:
        for info in function.value_info:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(
                    f"{function.domain}::{function.name}::{info.name}", info.type.tensor_type.elem_type
                )
    return types


def element_type_of(value: ir.Value | None, types: dict[str, int], scope: str = "") -> int | None:
    """The element type of ``value``: declared on the value, else inferred."""
    if value is None:
        return None
    if value.dtype is not None:
        return int(value.dtype)
    if value.const_value is not None:
        return int(value.const_value.dtype)
    return types.get(f"{scope}{value.name}")
