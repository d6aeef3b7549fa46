"""Conv and ConvTranspose through convert, energy and validate, on the bundled MNIST CNN
and a small upsampler: selection by scope, operation counts, per-node drift and the fp8
baselines of the same nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx.energy import energy
from lmul_onnx.reference import reference_evaluator
from lmul_onnx.testing import IR_VERSION, ONNX_OPSET

MNIST = Path(__file__).resolve().parents[1] / "models" / "mnist" / "mnist.onnx"


def lmul_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.domain == "lmul"]


def upsampler() -> onnx.ModelProto:
    """Conv (weights) -> ConvTranspose (weights) -> Conv of two activations (X as weights)."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3, 4, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "ConvTranspose", ["h", "w2", "b2"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Conv", ["y", "k"], ["z"], name="dynamic", group=3),
    ]
    graph = helper.make_graph(
        nodes,
        "upsampler",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, [3, 1, 3, 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [w1, w2, b2],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=IR_VERSION
    )


def test_scopes_select_convolutions() -> None:
    model = upsampler()
    assert lmul_ops(lmul_onnx.convert(model)) == ["LMulConv", "LMulConvTranspose", "LMulConv"]
    assert lmul_ops(lmul_onnx.convert(model, scope="weights")) == ["LMulConv", "LMulConvTranspose"]
    assert lmul_ops(lmul_onnx.convert(model, scope="attention")) == ["LMulConv"]
    only = lmul_onnx.convert(model, op_types_to_quantize=["ConvTranspose"], mantissa_bits=3)
    assert lmul_ops(only) == ["LMulConvTranspose"]
    node = next(n for n in only.graph.node if n.domain == "lmul")
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {"strides": [2, 2], "pads": [1, 1, 1, 1], "mantissa_bits": 3}


def test_converted_upsampler_runs_like_its_reference() -> None:
    converted = lmul_onnx.convert(upsampler(), mantissa_bits=4)
    rng = np.random.default_rng(4)
    feeds = {
        "x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32),
        "k": rng.standard_normal((3, 1, 3, 3)).astype(np.float32),
    }
    (native,) = lmul_onnx.InferenceSession(converted.SerializeToString()).run(None, feeds)
    (reference,) = reference_evaluator(converted).run(None, feeds)
    assert native.shape == reference.shape == (1, 3, 14, 14)
    assert np.allclose(native, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_energy_counts_convolutions() -> None:
    report = energy(upsampler())
    # conv: 64 outputs x 4 channels, 2*9 products each; up: every input
    # element (4 x 8 x 8) meets 3 * 16 weights; dynamic: 3 x 14 x 14 outputs of 9 products
    conv, up, dynamic = 4 * 64 * 18, 4 * 64 * 3 * 16, 3 * 14 * 14 * 9
    assert report["per_op"]["Conv"]["multiplications"] == conv + dynamic
    assert report["per_op"]["ConvTranspose"]["multiplications"] == up
    assert report["total"]["additions"] == (4 * 64 * 17) + (up + 3 * 16 * 16) + 3 * 14 * 14 * 8


def test_mnist_energy_and_validation(tmp_path: Path) -> None:
    converted = tmp_path / "mnist.lmul.onnx"
    lmul_onnx.convert(MNIST, converted)
    counts = energy(converted, dims={"batch": 1})
    # 28x28x32 outputs of 9 products, 14x14x64 outputs of 32*9 products
    assert counts["per_op"]["Conv"]["multiplications"] == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 288
    assert counts["total"]["converted_multiplications"] == counts["total"]["multiplications"]
    digits = np.load(MNIST.parent / "mnist-digits.npz")
    inputs = tmp_path / "digits.npz"
    np.savez(inputs, input=digits["input"][:64])
    report = lmul_onnx.validate(MNIST, converted, inputs=inputs, per_node=True, compare=["fp8-e4m3"])
    conv_nodes = [n for n in report.nodes if n["op_type"] == "LMulConv"]
    assert len(conv_nodes) == 2
    assert all(n["cosine"] > 0.99 for n in conv_nodes)
    logits = report.outputs["logits"]
    assert logits["top1_agreement"] >= 0.98
    assert report.baselines["fp8-e4m3"]["logits"]["cosine"] == pytest.approx(logits["cosine"], abs=0.01)
