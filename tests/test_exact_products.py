"""The exact-products rule: products by 0, ±2^k or a 0/1 mask stay exact (unless asked)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx.cli.main import main
from lmul_onnx.energy import energy
from lmul_onnx.passes.exact_products import EXACT_POWER_OF_TWO, ZERO_ONE_MASK, classify_values
from lmul_onnx.passes.selection import SelectionOptions


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.float32([1.0, -1.0, 0.5, 2.0**-20, 0.0, 1024.0]), EXACT_POWER_OF_TWO),
        (np.float32([0.0, 1.0, 1.0]), ZERO_ONE_MASK),
        (np.array([True, False]), ZERO_ONE_MASK),
        (np.float16([0.25, -8.0]), EXACT_POWER_OF_TWO),
        (np.array([0.5, 4.0], dtype=ml_dtypes.bfloat16), EXACT_POWER_OF_TWO),
        (np.float32([2.0**-140]), EXACT_POWER_OF_TWO),  # a subnormal power of two
        (np.float32([1.0, 3.0]), None),
        (np.float32([0.1]), None),
        (np.float32([1.0, np.inf]), None),
        (np.float32([np.nan]), None),
        (np.float32([]), None),
        (np.int64([0, 1, 4]), EXACT_POWER_OF_TWO),
    ],
)
def test_classify_values(values: np.ndarray, expected: str | None) -> None:
    assert classify_values(values) == expected


def test_large_weights_are_rejected_on_their_first_chunk() -> None:
    weights = np.ones(1 << 20, np.float32)
    weights[3] = 0.3
    assert classify_values(weights) is None
    assert classify_values(np.ones(1 << 20, np.float32)) == ZERO_ONE_MASK


def _graph_model(rng: np.random.Generator) -> onnx.ModelProto:
    """One product per kind of constant operand, all on the input x (2 x 4)."""
    dense = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "dense")
    signs = numpy_helper.from_array(rng.choice([-1.0, 1.0], (4, 4)).astype(np.float32), "signs")
    mask = numpy_helper.from_array(np.int64([[1, 0, 1, 1]]), "mask")
    nodes = [
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Mul", ["x", "half"], ["a"], name="half/Mul"),
        helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.float32([3.0]))),
        helper.make_node("Mul", ["x", "three"], ["b"], name="three/Mul"),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["mask_f", "shape"], ["mask_r"]),
        helper.make_node("Mul", ["mask_r", "x"], ["c"], name="mask/Mul"),
        helper.make_node("MatMul", ["x", "signs"], ["d"], name="signs/MatMul"),
        helper.make_node("MatMul", ["x", "dense"], ["e"], name="dense/MatMul"),
        helper.make_node("Mul", ["x", "x"], ["f"], name="square/Mul"),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["ones"], value=numpy_helper.from_array(np.float32([1]))
        ),
        helper.make_node("Mul", ["x", "ones"], ["g"], name="ones/Mul"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcdefg"]
    graph = helper.make_graph(
        nodes,
        "exact",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        outputs,
        [dense, signs, mask, numpy_helper.from_array(np.int64([1, 4]), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


EXPECTED_REASONS = {
    "half/Mul": EXACT_POWER_OF_TWO,
    "mask/Mul": ZERO_ONE_MASK,
    "signs/MatMul": EXACT_POWER_OF_TWO,
    "ones/Mul": ZERO_ONE_MASK,
}


def test_convert_leaves_exact_products_exact_with_their_reason(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    model = _graph_model(rng)
    report = lmul_onnx.convert_file(_save(model, tmp_path), tmp_path / "out.onnx", SelectionOptions())
    reasons = {n.name: n.decision.reason for n in report.nodes if not n.decision.convert}
    assert reasons == EXPECTED_REASONS
    assert {n.name for n in report.converted} == {"three/Mul", "dense/MatMul", "square/Mul"}


def test_every_product_converts_them_too(rng: np.random.Generator) -> None:
    converted = lmul_onnx.convert(_graph_model(rng), every_product=True)
    products = [
        n for n in converted.graph.node if n.op_type.startswith("LMul") or n.op_type in ("Mul", "MatMul")
    ]
    assert len(products) == 7 and all(n.domain == "lmul" for n in products)


def test_energy_counts_exact_products_separately(rng: np.random.Generator) -> None:
    report = energy(_graph_model(rng))
    exact = {n["name"]: n["exact"] for n in report["nodes"] if n["exact"]}
    assert exact == EXPECTED_REASONS
    # 8 products for each of the three element-wise Muls, 2x4x4 = 32 for the MatMul
    assert report["total"]["exact_products"]["nodes"] == 4
    assert report["total"]["exact_products"]["multiplications"] == 8 + 8 + 8 + 32


def test_cli_every_product_and_reason(rng: np.random.Generator, tmp_path: Path) -> None:
    path = _save(_graph_model(rng), tmp_path)
    result = CliRunner().invoke(main, ["convert", str(path), "-q", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1 exact power of two" in result.output  # MatMul by signs
    assert "2 0/1 mask, 1 exact power of two" in result.output  # Mul by a mask, by ones, by 0.5
    result = CliRunner().invoke(main, ["convert", str(path), "-q", "--dry-run", "--every-product"])
    assert "would convert 7 of 7 candidate nodes" in result.output


def _save(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "exact.onnx"
    onnx.save(model, path)
    return path
