"""Baselines to compare L-Mul with: the original model with the operands of the same
nodes rounded to fp8 (e4m3 or e5m2) or bfloat16, built from standard ONNX ops only
(``Cast`` to the narrow type and back; saturating for fp8, as ONNX casts default to).

The nodes are named by their stable keys (:attr:`lmul_onnx.graph.NodeEntry.key`), so
nodes in subgraphs and model-local functions and unnamed nodes are rounded exactly where
they are; no other node is touched.

fp8 casts need opset 19; an older model is raised to opset 19 first by onnxscript's
version converter (which works on onnx-ir and falls back to onnx's own).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import onnx_ir as ir
import onnxscript.version_converter

from lmul_onnx import graph
from lmul_onnx.choices import BASELINE_TYPES

BASELINES: dict[str, ir.DataType] = {
    kind: getattr(ir.DataType, name) for kind, name in BASELINE_TYPES.items()
}
FP8_OPSET = 19


class BaselineError(ValueError):
    """A baseline cannot be built for this model."""


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Silence the version converter's notes ("... target version: 19"), which it logs
    on every call; the outcome is checked (and reported) by the caller."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):  # type: ignore[type-var]
            yield
    finally:
        logger.setLevel(level)


def _default_opset(model: ir.Model | ir.Function) -> int:
    return next((v for d, v in model.opset_imports.items() if d in ("", "ai.onnx")), 1)


def _raise_opset(model: ir.Model, kind: str) -> None:
    try:
        with _quiet_converter():
            onnxscript.version_converter.convert_version(model, FP8_OPSET, fallback=True)
    except Exception as error:
        raise BaselineError(f"{kind} needs opset {FP8_OPSET}; converting the model failed: {error}") from None
    if _default_opset(model) < FP8_OPSET:
        raise BaselineError(f"{kind} needs opset {FP8_OPSET}; the model could not be raised to it")
    for function in model.functions.values():
        if _default_opset(function) < FP8_OPSET:
            raise BaselineError(
                f"{kind} needs opset {FP8_OPSET}; function {graph.function_id(function)} imports an older one"
            )


def operand_rounded_model(
    model: graph.ModelInput, node_keys: Iterable[str], kind: str, types: graph.Types | None = None
) -> ir.Model:
    """A copy of ``model`` whose nodes with the given keys see their first two inputs
    rounded to ``kind`` (``fp8-e4m3``, ``fp8-e5m2``, ``bf16``) and cast back.
    ``types``: ``graph.infer(model)`` when ``model`` is an ``ir.Model`` already inferred."""
    if kind not in BASELINES:
        raise BaselineError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
    target = BASELINES[kind]
    loaded, _ = graph.load(model, validate=False)
    wanted = set(node_keys)
    entries = graph.find(loaded, wanted)
    missing = sorted(wanted - set(entries))
    if missing:
        raise BaselineError(f"the model has no node at {missing[0]}")
    types = types if types is not None else graph.infer(loaded)
    operand_types = {
        key: [types.dtypes(v, entry.function) for v in entry.node.inputs[:2]]
        for key, entry in entries.items()
    }
    result = ir.from_proto(ir.to_proto(loaded)) if loaded is model else loaded  # never change the caller's
    entries = graph.find(result, wanted)
    op_types = {key: (entry.node.domain, entry.node.op_type) for key, entry in entries.items()}
    if target != ir.DataType.BFLOAT16 and _default_opset(result) < FP8_OPSET:
        _raise_opset(result, kind)  # may rebuild the graph: find the nodes again
        entries = graph.find(result, wanted)
    for number, (key, entry) in enumerate(entries.items()):
        node = entry.node
        if (node.domain, node.op_type) != op_types[key]:
            raise BaselineError(f"raising the opset moved node {entry.name}; no {kind} baseline")
        for position, value in enumerate(node.inputs[:2]):
            if value is None:
                continue
            (back,) = operand_types[key][position] if len(operand_types[key][position]) == 1 else (None,)
            if back is None:
                raise BaselineError(f"node {entry.name}: operand {position} has no single known element type")
            stem = f"{value.name or 'operand'}__{kind}_{number}_{position}"
            narrow = ir.node("Cast", [value], {"to": target}, name=f"{stem}/Cast")
            wide = ir.node("Cast", [narrow.outputs[0]], {"to": back}, name=f"{stem}/CastBack")
            narrow.outputs[0].name, wide.outputs[0].name = f"{stem}_narrow", stem
            node.graph.insert_before(node, [narrow, wide])
            node.replace_input_with(position, wide.outputs[0])
    return result
