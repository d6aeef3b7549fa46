"""Baselines to compare L-Mul with: the original model with the operands of the same
nodes rounded to fp8 (e4m3 or e5m2) or bfloat16, built from standard ONNX ops only
(``Cast`` to the narrow type and back; saturating for fp8, as ONNX casts default to).

fp8 casts need opset 19; an older model is raised to opset 19 first by onnxscript's
version converter (which works on onnx-ir and falls back to onnx's own).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from lmul_onnx.choices import BASELINE_TYPES
from lmul_onnx.passes.element_types import infer_element_types

BASELINES: dict[str, int] = {kind: getattr(TensorProto, name) for kind, name in BASELINE_TYPES.items()}
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


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def operand_rounded_model(model: onnx.ModelProto, node_names: Iterable[str], kind: str) -> onnx.ModelProto:
    """A copy of ``model`` whose named nodes see their first two inputs rounded to ``kind``."""
    if kind not in BASELINES:
        raise BaselineError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
    target = BASELINES[kind]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if target != TensorProto.BFLOAT16 and _default_opset(result) < FP8_OPSET:
        try:
            upgraded = ir.from_proto(result)
            with _quiet_converter():
                import onnxscript.version_converter

                onnxscript.version_converter.convert_version(upgraded, FP8_OPSET, fallback=True)
            result = ir.to_proto(upgraded)
        except Exception as error:
            raise BaselineError(
                f"{kind} needs opset {FP8_OPSET}; converting the model failed: {error}"
            ) from None
        if _default_opset(result) < FP8_OPSET:
            raise BaselineError(f"{kind} needs opset {FP8_OPSET}; the model could not be raised to it")
    types = infer_element_types(ir.from_proto(result))
    wanted = set(node_names)
    nodes: list[onnx.NodeProto] = []
    for node in result.graph.node:
        if node.name in wanted:
            for position, name in enumerate(node.input[:2]):
                if not name:
                    continue
                original_type = types.get(name, TensorProto.FLOAT)
                narrow, back = (
                    f"{name}__{kind}_{node.name}_{position}",
                    f"{name}__{kind}_back_{node.name}_{position}",
                )
                nodes.append(helper.make_node("Cast", [name], [narrow], name=f"{narrow}/Cast", to=target))
                nodes.append(
                    helper.make_node("Cast", [narrow], [back], name=f"{back}/Cast", to=original_type)
                )
                node.input[position] = back
        nodes.append(node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result
