"""Operation counts and energy prices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import lmul_onnx
from lmul_onnx import zoo
from lmul_onnx.energy import DEFAULT_TABLE_PJ, energy


def single(op: str, shapes: list[list | None], out: list, **attrs: object) -> onnx.ModelProto:
    names = [f"i{k}" if s is not None else "" for k, s in enumerate(shapes)]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
        for n, s in zip(names, shapes, strict=True)
        if n
    ]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["o"], name="n", **attrs)],
        "g",
        inputs,
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "mults", "adds"),
    [
        ("MatMul", [[4, 5], [5, 3]], {}, 4 * 3 * 5, 4 * 3 * 4),
        ("MatMul", [[5], [5, 3]], {}, 3 * 5, 3 * 4),
        ("MatMul", [[4, 5], [5]], {}, 4 * 5, 4 * 4),
        ("MatMul", [[5], [5]], {}, 5, 4),
        ("MatMul", [[2, 1, 4, 5], [3, 5, 6]], {}, 2 * 3 * 4 * 6 * 5, 2 * 3 * 4 * 6 * 4),
        ("Gemm", [[4, 5], [5, 3]], {}, 60, 48),
        ("Gemm", [[4, 5], [5, 3], [3]], {}, 60, 48 + 12),
        ("Gemm", [[5, 4], [3, 5], [4, 3]], {"transA": 1, "transB": 1}, 60, 48 + 12),
        ("Mul", [[4, 1, 3], [2, 1]], {}, 4 * 2 * 3, 0),
    ],
)
def test_exact_counts(op: str, shapes: list, attrs: dict, mults: int, adds: int) -> None:
    report = energy(single(op, shapes, [], **attrs))
    node = report["nodes"][0]
    assert (node["multiplications"], node["additions"]) == (mults, adds)
    t = DEFAULT_TABLE_PJ
    assert node["energy_pj"]["original"] == pytest.approx(mults * t["fp32_mul"] + adds * t["fp32_add"])
    assert node["energy_pj"]["lmul"] == pytest.approx(mults * t["int32_add"] + adds * t["fp32_add"])
    assert node["energy_pj"]["as_is"] == node["energy_pj"]["original"]


def test_paper_headline_savings() -> None:
    one_product = energy(single("Mul", [[1], [1]], []))["total"]
    assert one_product["lmul_saving_percent"] == pytest.approx(100 * (1 - 0.1 / 3.7))  # ~97 %, paper: ~95 %
    dot = energy(single("MatMul", [[4096], [4096]], []))["total"]
    assert 78 < dot["lmul_saving_percent"] < 80  # paper: ~80 % per dot product


def test_symbolic_dims_are_unknown_until_bound() -> None:
    model = single("MatMul", [["batch", 8], [8, 2]], [])
    assert energy(model)["total"]["unknown_nodes"] == 1
    bound = energy(model, dims={"batch": 3})
    assert bound["total"]["unknown_nodes"] == 0 and bound["total"]["multiplications"] == 3 * 2 * 8


def test_converted_model_as_is_and_cli(tmp_path: Path) -> None:
    source = zoo.path("paraphrase-minilm-l3")
    converted = tmp_path / "m.lmul.onnx"
    lmul_onnx.convert(source, converted, every_product=True)
    dims = {"batch_size": 1, "sequence_length": 16}
    before, after = energy(source, dims=dims), energy(converted, dims=dims)
    assert before["total"]["multiplications"] == after["total"]["multiplications"] > 10**6
    assert before["total"]["saving_percent"] == 0
    assert after["total"]["saving_percent"] == pytest.approx(after["total"]["lmul_saving_percent"])
    assert 70 < after["total"]["saving_percent"] < 80
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"int32_add": 0.0}))
    cli = Path(sys.executable).with_name("lmul-onnx")
    completed = subprocess.run(
        [
            str(cli),
            "energy",
            str(converted),
            "--dim",
            "batch_size=1",
            "--dim",
            "sequence_length=16",
            "--table",
            str(table),
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(completed.stdout)
    assert report["table_pj"]["int32_add"] == 0.0 and report["total"]["energy_pj"]["as_is"] > 0


def test_cli_unreadable_model_exits_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 definitely not onnx")
    cli = Path(sys.executable).with_name("lmul-onnx")
    completed = subprocess.run(
        [str(cli), "energy", str(garbage)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2
    assert "not a readable ONNX model" in completed.stderr and "Traceback" not in completed.stderr
