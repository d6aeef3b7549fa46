"""``--offset auto``: per-node offsets calibrated on operand samples of the original model
(lmul_onnx.calibration), through Python and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import inputs as model_inputs
from lmul_onnx.calibration import CalibrationError, CalibrationOptions
from lmul_onnx.cli.main import main
from lmul_onnx.offsets import UNBIASED_OFFSETS, zero_bias_offset
from lmul_onnx.testing import node_offsets, square_of_product_model


@pytest.fixture
def model(rng: np.random.Generator) -> onnx.ModelProto:
    return square_of_product_model(rng.standard_normal((8, 6)), batch="batch")


def test_auto_is_zero_bias_offset_of_the_nodes_own_samples(model: onnx.ModelProto) -> None:
    options = CalibrationOptions(samples=2, seed=7, dims={"batch": 5})
    converted = lmul_onnx.convert(model, mantissa_bits=4, offset="auto", calibration=options)
    # the samples validate would generate, and the exact operands they give
    specs = [model_inputs.InputSignature("x", np.dtype(np.float32), ("batch", 8))]
    generated = model_inputs.InputOptions(dims={"batch": 5}, seed=7)
    x = np.concatenate([model_inputs.generate(specs, generated, i)["x"] for i in range(2)])
    w = numpy_helper.to_array(model.graph.initializer[0])
    # h as onnxruntime computes it (its float32 sums may round otherwise than numpy's)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
    session = lmul_onnx.InferenceSession(exposed.SerializeToString())
    h = np.concatenate([session.run(["h"], {"x": x[i : i + 5]})[0] for i in (0, 5)])
    got = node_offsets(converted)
    assert got["proj/MatMul"] == zero_bias_offset(x, np.concatenate([w, w]), 4)  # W seen once per sample
    assert got["square/Mul"] == zero_bias_offset(h, h, 4)
    # and they are not the data-free constant
    assert got["square/Mul"] != UNBIASED_OFFSETS[4]


def test_calibration_is_deterministic(model: onnx.ModelProto) -> None:
    options = CalibrationOptions(samples=3, seed=1)
    first = lmul_onnx.convert(model, mantissa_bits=3, offset="auto", calibration=options)
    second = lmul_onnx.convert(model, mantissa_bits=3, offset="auto", calibration=options)
    assert node_offsets(first) == node_offsets(second)
    other = lmul_onnx.convert(model, mantissa_bits=3, offset="auto", calibration=CalibrationOptions(seed=2))
    assert node_offsets(other) != node_offsets(first)


@pytest.mark.parametrize("criterion", ["product", "output"])
def test_both_criteria_find_the_exact_offset(tmp_path: Path, criterion: str) -> None:
    """1.5 x 1.5 = 2.25; L-Mul gives (1 + 0.5 + 0.5 + c) * 2 at m >= 1: exact for c = 1/8."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    calibration = tmp_path / "inputs.npz"
    values = np.array([1.5, -3.0, 0.75, 6.0], np.float32)  # significand 1.5 throughout
    np.savez(calibration, a=values, b=values[::-1].copy())
    options = CalibrationOptions(inputs=calibration, criterion=criterion)
    converted = lmul_onnx.convert(model, mantissa_bits=4, offset="auto", calibration=options)
    assert node_offsets(converted) == {"mul": 1 << 20}


def test_auto_per_node_and_subgraph_fallback(rng: np.random.Generator) -> None:
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z2"], name="pass")],
        "else",
        [],
        [helper.make_tensor_value_info("z2", TensorProto.FLOAT, [2, 4])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="outer"),
            helper.make_node("Mul", ["h", "h"], ["s"], name="square"),
            helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=body, else_branch=other),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 4]),
        ],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    converted = lmul_onnx.convert(model, mantissa_bits=4, offset="paper", offset_for={"outer|inner": "auto"})
    main_nodes = node_offsets(converted)
    assert main_nodes["square"] is None  # paper: no attribute
    assert main_nodes["outer"] not in (None, UNBIASED_OFFSETS[4])
    then_branch = next(a.g for a in converted.graph.node[2].attribute if a.name == "then_branch")
    inner = then_branch.node[0]
    assert inner.domain == "lmul"
    assert next(a.i for a in inner.attribute if a.name == "offset") == UNBIASED_OFFSETS[4]


def test_cli_auto_summary_and_bad_calibration_files(model: onnx.ModelProto, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    runner = CliRunner()
    args = [
        "convert",
        str(source),
        "-o",
        str(tmp_path / "out.onnx"),
        "--mantissa-bits",
        "4",
        "-q",
        "--overwrite",
    ]
    result = runner.invoke(main, [*args, "--offset", "auto", "--dim", "batch=4", "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert "offset m=4: auto (calibrated)" in result.output and "on 2 node(s)" in result.output
    result = runner.invoke(main, [*args, "--offset", "auto", "--json", "-"])
    report = json.loads(result.output)
    assert {e["choice"] for e in report["offsets"]} == {"auto"}
    assert all(n["reason"].startswith("auto: product bias zeroed on 1 sample(s)") for n in report["nodes"])

    (tmp_path / "out.onnx").unlink()
    not_npz = tmp_path / "bad.npz"
    not_npz.write_text("not an archive")
    wrong_names = tmp_path / "wrong.npz"
    np.savez(wrong_names, z=np.zeros((2, 8), np.float32))
    wrong_type = tmp_path / "type.npz"
    np.savez(wrong_type, x=np.zeros((2, 8), np.float64))
    for bad, expected in (
        (not_npz, "cannot read inputs"),
        (wrong_names, "do not match the model"),
        (wrong_type, "float64"),
        (tmp_path / "missing.npz", "cannot read inputs"),
    ):
        result = runner.invoke(main, [*args, "--offset", "auto", "--calibration", str(bad)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("Error: calibration:")
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(CalibrationError):
        lmul_onnx.convert(model, offset="auto", calibration=CalibrationOptions(inputs=not_npz))
