"""SPEC section 3, last paragraph: wrongly typed attributes, attributes an op does not
define and an ``lmul`` import other than version 1 are errors when the session is
created. The kernels refuse wrong types themselves (plain onnxruntime); what the C API
cannot show them (unknown attributes, the import version) ``lmul_onnx`` refuses before
onnxruntime sees the model (lmul_onnx.ops.check_model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

import lmul_onnx
from lmul_onnx.cli.main import main
from lmul_onnx.ops import DomainError, check_model, domain_problems
from lmul_onnx.reference import reference_evaluator
from lmul_onnx.testing import single_op_model

TENSOR_3 = helper.make_tensor("t", onnx.TensorProto.INT64, [], [3])

# name: (op, attributes, message of the kernel)
KERNEL_CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "mantissa_bits_ints": (
        "LMul",
        {"mantissa_bits": [3]},
        "'mantissa_bits' must be an int, got a list of ints",
    ),
    "mantissa_bits_tensor": (
        "LMulMatMul",
        {"mantissa_bits": TENSOR_3},
        "'mantissa_bits' must be an int, got a tensor",
    ),
    "mantissa_bits_strings": (
        "LMul",
        {"mantissa_bits": ["3"]},
        "'mantissa_bits' must be an int, got an empty list",
    ),
    "mantissa_bits_floats": (
        "LMul",
        {"mantissa_bits": [3.0]},
        "'mantissa_bits' must be an int, got a list of floats",
    ),
    "offset_tensor": ("LMul", {"offset": TENSOR_3}, "'offset' must be an int, got a tensor"),
    "alpha_string": ("LMulGemm", {"alpha": "2"}, "'alpha' must be a float, got a string"),
    "beta_string": ("LMulGemm", {"beta": "2"}, "'beta' must be a float, got a string"),
    "alpha_floats": ("LMulGemm", {"alpha": [2.0]}, "'alpha' must be a float, got a list of floats"),
    "transA_ints": ("LMulGemm", {"transA": [1]}, "'transA' must be an int, got a list of ints"),
    "transB_float": ("LMulGemm", {"transB": 1.0}, "'transB' must be an int, got a float"),
    "auto_pad_int": ("LMulConv", {"auto_pad": 1}, "'auto_pad' must be a string, got an int"),
    "strides_int": ("LMulConv", {"strides": 2}, "'strides' must be a list of ints, got an int"),
    "pads_floats": ("LMulConv", {"pads": [1.0, 1.0]}, "'pads' must be a list of ints, got a list of floats"),
    "group_ints": ("LMulConvTranspose", {"group": [1]}, "'group' must be an int, got a list of ints"),
    "output_shape_string": (
        "LMulConvTranspose",
        {"output_shape": "4"},
        "'output_shape' must be a list of ints, got a string",
    ),
    "conv_offset_float": ("LMulConv", {"offset": 0.5}, "'offset' must be an int, got a float"),
}


def plain_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(lmul_onnx.get_library_path())
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def model_of(op: str, attributes: dict[str, Any], lmul_version: int = 1) -> onnx.ModelProto:
    model = single_op_model(op, [np.float32, np.float32], node_name="bad_node", **attributes)
    for opset in model.opset_import:
        if opset.domain == "lmul":
            opset.version = lmul_version
    return model


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_kernel_refuses_wrongly_typed_attributes(name: str) -> None:
    op, attributes, message = KERNEL_CASES[name]
    with pytest.raises(Exception, match=message) as error:
        plain_session(model_of(op, attributes))
    assert "bad_node" in str(error.value)


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_python_check_refuses_wrongly_typed_attributes(name: str) -> None:
    op, attributes, _ = KERNEL_CASES[name]
    attribute = next(iter(attributes))
    with pytest.raises(DomainError, match=f"'bad_node'.*attribute '{attribute}' must be"):
        lmul_onnx.InferenceSession(model_of(op, attributes).SerializeToString())


def test_unknown_attribute_is_refused() -> None:
    model = model_of("LMulMatMul", {"mantisa_bits": 3})
    with pytest.raises(DomainError, match=r"'bad_node'.*unknown attribute 'mantisa_bits'"):
        lmul_onnx.InferenceSession(model.SerializeToString())


def test_attribute_of_another_op_is_refused() -> None:
    with pytest.raises(DomainError, match="unknown attribute 'alpha'"):
        check_model(model_of("LMul", {"alpha": 2.0}))


def test_lmul_version_2_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "v2.onnx"
    onnx.save(model_of("LMul", {}, lmul_version=2), path)
    with pytest.raises(DomainError, match="'lmul' domain at version 2; only version 1 exists"):
        lmul_onnx.InferenceSession(path)


def test_function_import_version_is_checked() -> None:
    model = model_of("LMul", {})
    function = helper.make_function(
        "local",
        "f",
        ["x"],
        ["y"],
        [helper.make_node("LMul", ["x", "x"], ["y"], domain="lmul")],
        [helper.make_opsetid("lmul", 3)],
    )
    model.functions.append(function)
    assert domain_problems(model) == [
        "function 'f' imports the 'lmul' domain at version 3; only version 1 exists"
    ]


def test_reference_evaluator_applies_the_same_rules() -> None:
    with pytest.raises(DomainError, match="unknown attribute"):
        reference_evaluator(model_of("LMul", {"mantisa_bits": 3}))


def test_valid_models_pass() -> None:
    model = model_of(
        "LMulGemm", {"alpha": 0.5, "beta": 2.0, "transA": 1, "transB": 0, "mantissa_bits": 4, "offset": 7}
    )
    assert domain_problems(model) == []
    session = lmul_onnx.InferenceSession(model.SerializeToString())
    a = np.ones((3, 2), np.float32)
    assert session.run(None, {"in0": a, "in1": np.ones((3, 4), np.float32)})[0].shape == (2, 4)


def test_validate_refuses_a_model_breaking_the_domain_with_exit_2(tmp_path: Path) -> None:
    original = single_op_model("MatMul", [np.float32, np.float32], domain="", node_name="bad_node")
    converted = model_of("LMulMatMul", {"mantisa_bits": 3})
    for model in (original, converted):
        for value in model.graph.input:
            value.type.tensor_type.shape.dim.add().dim_value = 2
            value.type.tensor_type.shape.dim.add().dim_value = 2
        onnx.save(model, tmp_path / f"{'converted' if model is converted else 'original'}.onnx")
    result = CliRunner().invoke(
        main, ["validate", str(tmp_path / "original.onnx"), str(tmp_path / "converted.onnx"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "unknown attribute 'mantisa_bits'" in result.output
    assert "Traceback" not in result.output
