"""convert's Pad folding (lmul_onnx.passes.fold_pad): a zero Pad that feeds only LMulConv
nodes becomes part of their ``pads``, with bit-identical outputs; every condition that
keeps the Pad keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx.cli.main import main
from lmul_onnx.convert import convert_file
from lmul_onnx.passes.selection import SelectionOptions
from lmul_onnx.testing import IR_VERSION

ROOT = Path(__file__).resolve().parents[1]
EFFICIENTNET = ROOT / "models" / "build" / "efficientnet.onnx"
X_SHAPE = (2, 3, 9, 8)


def constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array.astype(np.int64)))


def pad_conv_model(
    *,
    opset: int = 17,
    pads: list[int] | None = None,
    source: str = "initializer",
    value: float | None = None,
    axes: list[int] | None = None,
    mode: str | None = None,
    conv: dict[str, Any] | None = None,
    second_use: str | None = None,
    weight_fill: float | None = None,
    channels: int = 3,
) -> onnx.ModelProto:
    """x -> Pad -> Conv(w, b) -> y. ``source``: how the pads are given from opset 11
    ("initializer", "constant", "computed" by a torch-like ConstantOfShape/Concat/Reshape
    chain, "input"); ``second_use``: "conv" (a second Conv reads the Pad too), "relu" or
    "output" (the Pad's output is also a graph output)."""
    rng = np.random.default_rng(5)
    pads = [0, 0, 1, 2, 0, 0, 2, 1] if pads is None else pads
    w = rng.standard_normal((4, channels, 3, 3)).astype(np.float32)  # channels: X's after padding
    if weight_fill is not None:
        w[0, 0, 0, 0] = weight_fill
    b = rng.standard_normal(4).astype(np.float32)
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)]
    nodes = []
    attributes: dict[str, Any] = {} if mode is None else {"mode": mode}
    if opset < 11:
        attributes["pads"] = pads
        if value is not None:
            attributes["value"] = value
        pad_inputs = ["x"]
    else:
        pads_array = np.asarray(pads, dtype=np.int64)
        if source == "initializer":
            initializers.append(numpy_helper.from_array(pads_array, "pads"))
        elif source == "constant":
            nodes.append(constant("pads", pads_array))
        elif source == "computed":  # as torch exports F.pad: [begin/end pairs, last axis first] reordered
            half = len(pads) // 2
            pairs = np.stack([pads_array[:half], pads_array[half:]], axis=1)[::-1].reshape(-1)
            nodes += [
                constant("tail", pairs[:4]),
                constant("zeros_shape", np.array([pairs.size - 4])),
                helper.make_node(
                    "ConstantOfShape",
                    ["zeros_shape"],
                    ["zeros"],
                    value=numpy_helper.from_array(np.zeros(1, np.int64)),
                ),
                helper.make_node("Concat", ["tail", "zeros"], ["joined"], axis=0),
                constant("pair_shape", np.array([-1, 2])),
                helper.make_node("Reshape", ["joined", "pair_shape"], ["paired"]),
                constant("starts", np.array([-1])),
                constant("ends", np.array([-(2**63)])),
                constant("slice_axes", np.array([0])),
                constant("steps", np.array([-1])),
                helper.make_node("Slice", ["paired", "starts", "ends", "slice_axes", "steps"], ["reversed"]),
                helper.make_node("Transpose", ["reversed"], ["columns"], perm=[1, 0]),
                constant("flat", np.array([-1])),
                helper.make_node("Reshape", ["columns", "flat"], ["pads"]),
            ]
        else:
            inputs.append(helper.make_tensor_value_info("pads", TensorProto.INT64, [len(pads)]))
        pad_inputs = ["x", "pads"]
        if value is not None or axes is not None:
            pad_inputs.append("" if value is None else "value")
            if value is not None:
                initializers.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        if axes is not None:
            initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
            pad_inputs.append("axes")
    nodes.append(helper.make_node("Pad", pad_inputs, ["padded"], name="pad", **attributes))
    nodes.append(helper.make_node("Conv", ["padded", "w", "b"], ["y"], name="conv", **(conv or {})))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_use == "conv":
        nodes.append(helper.make_node("Conv", ["padded", "w"], ["y2"], name="conv2", strides=[2, 2]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    elif second_use == "relu":
        nodes.append(helper.make_node("Relu", ["padded"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    elif second_use == "output":
        outputs.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "pad_conv", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return lmul_onnx.InferenceSession(model.SerializeToString()).run(None, feeds)


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = {"x": np.random.default_rng(6).standard_normal(X_SHAPE).astype(np.float32)}
    if any(i.name == "pads" for i in model.graph.input):
        feeds["pads"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    return feeds


def assert_same_outputs(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Convert with and without folding: bit-identical outputs; the folded model returned."""
    folded = lmul_onnx.convert(model, fold_pads=True, **options)
    kept = lmul_onnx.convert(model, **options)
    assert any(n.op_type == "Pad" for n in kept.graph.node)
    feeds = feeds_for(model)
    for a, b in zip(run(folded, feeds), run(kept, feeds), strict=True):
        assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    return folded


def conv_pads(model: onnx.ModelProto, name: str = "conv") -> list[int] | None:
    node = next(n for n in model.graph.node if n.name == name)
    return next((list(a.ints) for a in node.attribute if a.name == "pads"), None)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


FOLDED = {
    "initializer": {},
    "constant": {"source": "constant"},
    "computed": {"source": "computed"},  # a constant subgraph, evaluated
    "opset_10_attribute": {"opset": 10},
    "opset_10_value_zero": {"opset": 10, "value": 0.0},
    "constant_value_zero": {"value": 0.0},
    "mode_constant": {"mode": "constant"},
    "opset_18_axes": {"opset": 18, "axes": [2, 3], "pads": [1, 2, 2, 1]},
    "opset_18_negative_axes": {"opset": 18, "axes": [-1, -2], "pads": [2, 1, 1, 2]},
    "added_to_conv_pads": {"conv": {"pads": [1, 0, 0, 1], "strides": [2, 1]}},
    "conv_auto_pad_notset": {"conv": {"auto_pad": "NOTSET", "dilations": [2, 1]}},
    "two_convs": {"second_use": "conv"},
    "inf_weight": {"weight_fill": np.inf},  # L-Mul(0, inf) = NaN at padded positions either way
}


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_folds_zero_spatial_pads(name: str) -> None:
    folded = assert_same_outputs(pad_conv_model(**FOLDED[name]))
    assert "Pad" not in op_types(folded)
    # only the Pad and the constants that computed its pads are gone
    assert op_types(folded) == ["LMulConv"] + (["LMulConv"] if name == "two_convs" else [])
    assert conv_pads(folded) == ([2, 2, 2, 2] if name == "added_to_conv_pads" else [1, 2, 2, 1])
    if name == "two_convs":
        assert conv_pads(folded, "conv2") == [1, 2, 2, 1]


KEPT = {
    "reflect": {"mode": "reflect"},
    "edge_opset_10": {"opset": 10, "mode": "edge"},
    "value_one": {"value": 1.0},
    "value_negative_zero": {"value": -0.0},
    "opset_10_value_one": {"opset": 10, "value": 1.0},
    "negative_pads": {"pads": [0, 0, -1, 0, 0, 0, 1, 1]},
    "channel_pads": {"pads": [0, 1, 1, 1, 0, 0, 1, 1], "channels": 4},
    "batch_pads": {"pads": [1, 0, 1, 1, 0, 0, 1, 1]},
    "axes_with_channel": {"opset": 18, "axes": [1, 3], "pads": [0, 1, 1, 1], "channels": 4},
    "pads_from_input": {"source": "input"},
    "auto_pad": {"conv": {"auto_pad": "SAME_UPPER"}},
    "relu_also_reads": {"second_use": "relu"},
    "graph_output": {"second_use": "output"},
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_keeps_pads_it_cannot_fold(name: str) -> None:
    model = pad_conv_model(**KEPT[name])
    converted = lmul_onnx.convert(model, fold_pads=True)
    assert "Pad" in op_types(converted) and "LMulConv" in op_types(converted)
    assert onnx.printer.to_text(converted.graph) == onnx.printer.to_text(
        lmul_onnx.convert(model, fold_pads=False).graph
    )


def test_only_converted_convolutions_take_the_pads() -> None:
    model = pad_conv_model()
    assert "Pad" in op_types(lmul_onnx.convert(model, nodes_to_exclude=["^conv$"], fold_pads=True))
    assert "Pad" in op_types(lmul_onnx.convert(model, op_types_to_quantize=["MatMul"], fold_pads=True))
    assert "Pad" in op_types(lmul_onnx.convert(model))  # off by default (SPEC section 3 keeps nodes)
    twice = lmul_onnx.convert(lmul_onnx.convert(model), fold_pads=True)  # LMulConv nodes already
    assert "Pad" not in op_types(twice)


def test_cli_folds_on_request(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save(pad_conv_model(source="computed"), source)
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(source), "--fold-pad", "-q"])
    assert result.exit_code == 0, result.output
    assert "folded 1 Pad node(s) into the LMulConv nodes they feed" in result.output
    result = runner.invoke(main, ["convert", str(source), "--fold-pad", "--dry-run", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["folded_pads"] == ["pad"]
    out = tmp_path / "kept.onnx"
    result = runner.invoke(main, ["convert", str(source), "-o", str(out), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["folded_pads"] == []
    assert "Pad" in op_types(onnx.load(out))
    # validate finds the folded LMulConv's original (by its output), keyed by its original position
    converted = str(tmp_path / "model.lmul.onnx")
    args = ["--atol", "1", "--rtol", "1", "--per-node", "--compare", "fp8-e4m3", "--json", "-"]
    result = runner.invoke(main, ["validate", str(source), converted, *args])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["nodes"]
    position = [n.name for n in onnx.load(source).graph.node].index("conv")
    assert (row["name"], row["key"], row["output"]) == ("conv", str(position), "y")
    assert row["cosine"] > 0.999 and row["cosine_fp8-e4m3"] > 0.999


@pytest.mark.skipif(not EFFICIENTNET.is_file(), reason="models/build/efficientnet.onnx not exported")
def test_efficientnet_folds_every_pad_with_the_same_bits(tmp_path: Path) -> None:
    folded, kept = tmp_path / "folded.onnx", tmp_path / "kept.onnx"
    report = convert_file(EFFICIENTNET, folded, SelectionOptions(), fold_pads=True)
    convert_file(EFFICIENTNET, kept, SelectionOptions())
    assert len(report.folded_pads) == 17
    assert "Pad" not in op_types(onnx.load(folded))
    photos = np.load(EFFICIENTNET.with_name("efficientnet-photos.npz"))["input"][:2]
    (a,) = run(onnx.load(folded), {"input": photos})
    (b,) = run(onnx.load(kept), {"input": photos})
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_folds_inside_functions_and_subgraphs() -> None:
    """A Pad -> Conv pair in a model-local function body and in an If branch."""
    inner = pad_conv_model()
    body = list(inner.graph.node)
    pads = onnx.helper.make_node(
        "Constant", [], ["pads"], value=numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
    )
    function = helper.make_function(
        "local", "PadConv", ["x", "w", "b"], ["y"], [pads, *body], [helper.make_opsetid("", 17)]
    )
    weights = [i for i in inner.graph.initializer if i.name in ("w", "b")]
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["pads"], value=pads.attribute[0].t), *body],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("PadConv", ["x", "w", "b"], ["y_f"], domain="local", name="call"),
        helper.make_node("If", ["flag"], ["y_if"], name="if", then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y_f", "y_if")],
        weights,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
        ir_version=IR_VERSION,
    )
    folded = lmul_onnx.convert(model, fold_pads=True)
    kept = lmul_onnx.convert(model)
    assert [n.op_type for n in folded.functions[0].node] == ["LMulConv"]
    then_branch = next(a.g for a in folded.graph.node[1].attribute if a.name == "then_branch")
    assert [n.op_type for n in then_branch.node] == ["LMulConv"]
    feeds = {"x": feeds_for(model)["x"], "flag": np.array(True)}
    for a, b in zip(run(folded, feeds), run(kept, feeds), strict=True):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
