"""``lmul-onnx convert`` as a user runs it: output, JSON, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lmul_onnx.cli.main import main


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    w = numpy_helper.from_array(np.full((4, 3), 0.75, np.float32), "W")  # not a power of two
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "h"], ["y"], name="sq"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_default_output_and_summary(model_path: Path) -> None:
    code, output = invoke("convert", str(model_path), "--quiet")
    assert code == 0, output
    assert (model_path.parent / "model.lmul.onnx").is_file()
    assert "converted 2 of 2 candidate nodes" in output
    assert "MatMul" in output and "Mul" in output
    # 2x4 @ 4x3 (24 products, 18 additions) + 2x3 squares (6 products)
    assert "the 30 converted products use" in output and "all 30 of the model's multiplications" in output


def test_external_data_option(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code, output = invoke("convert", str(model_path), "-o", str(out), "--external-data", "--json", "-")
    assert code == 0, output
    assert json.loads(output)["written"] == [str(out), str(tmp_path / "out.onnx.data")]
    assert (tmp_path / "out.onnx.data").is_file()  # (this model's 48-byte weight stays inline)


def test_json_report(model_path: Path, tmp_path: Path) -> None:
    code, output = invoke(
        "convert",
        str(model_path),
        "-o",
        str(tmp_path / "out.onnx"),
        "--json",
        "-",
        "--scope",
        "weights",
        "--mantissa-bits",
        "4",
    )
    assert code == 0, output
    report = json.loads(output)
    assert report["converted"] == 1
    assert report["ops"]["Mul"] == {
        "found": 1,
        "converted": 0,
        "skipped": {"no constant operand (--scope weights)": 1},
    }
    assert report["nodes"][0]["mantissa_bits"] == 4 and report["nodes"][0]["new_op_type"] == "LMulMatMul"
    assert report["energy"]["multiplications"] == 30 and 0 < report["energy"]["saving_percent"] < 100


def test_dry_run_writes_nothing(model_path: Path) -> None:
    code, output = invoke("convert", str(model_path), "--dry-run", "--mantissa-bits-for", "sq=3", "-q")
    assert code == 0, output
    assert "would convert 2 of 2" in output and "m=3" in output
    assert not (model_path.parent / "model.lmul.onnx").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "no such file"),
        (["{dir}"], "is a directory"),
        (["{garbage}"], "not a readable ONNX model"),
        (["{truncated}"], "not a readable ONNX model"),
        (["{model}", "--ops", "MatMul,Softmax"], "unsupported op"),
        (["{model}", "--include", "("], "invalid regular expression"),
        (["{model}", "--mantissa-bits-for", "mm"], "expects KEY=VALUE"),
        (["{model}", "--mantissa-bits-for", "mm=x"], "not an integer"),
        (["{model}", "--mantissa-bits", "30"], "30"),
        (["{model}", "--scope", "everything"], "everything"),
        (["{model}", "-o", "{model}"], "is the input model"),
        (["{model}", "--offset", "-1"], "offset must be in 0..8388607"),
        (["{model}", "--offset", "8388608"], "offset must be in 0..8388607"),
        (["{model}", "--offset", "0x800000"], "offset must be in 0..8388607"),
        (["{model}", "--offset", "1.5"], "offset fraction must be in [0, 1)"),
        (["{model}", "--offset", "nan"], "offset fraction must be in [0, 1)"),
        (["{model}", "--offset", "fast"], "choose paper, unbiased"),
        (["{model}", "--offset-for", "mm=-3"], "offset must be in 0..8388607"),
        (["{model}", "--offset-for", "(=paper"], "invalid regular expression"),
        (["{model}", "--offset-for", "mm"], "expects KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_without_traceback(
    model_path: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_path.read_bytes()[:-7])
    values = {
        "dir": str(tmp_path),
        "garbage": str(garbage),
        "truncated": str(truncated),
        "model": str(model_path),
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("lmul-onnx")),
            "convert",
            *[a.format(**values) for a in args],
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no output may be written"


def test_memory_hint_for_large_embedded_weights(tmp_path: Path) -> None:
    """Weights of converted nodes that stay embedded (16 MiB or more) get a hint naming
    --external-data; with it, or when the node holding them is not converted, none."""
    big = numpy_helper.from_array(np.full((2112, 2048), 0.75, np.float32), "W")  # 16.5 MiB
    other = numpy_helper.from_array(np.full((2048,), 0.5, np.float32), "B")  # not read by a product
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("MatMul", ["x", "W"], ["h2"], name="mm_again"),  # W counted once
            helper.make_node("Add", ["h", "h2"], ["s"], name="sum"),
            helper.make_node("Add", ["s", "B"], ["y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048])],
        [big, other],
    )
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    hint = "memory: 16.5 MiB of converted weights embedded"

    code, output = invoke("convert", str(path), "-o", str(tmp_path / "a.onnx"))
    assert code == 0, output
    assert hint in output and "--external-data" in output
    code, output = invoke("convert", str(path), "-o", str(tmp_path / "b.onnx"), "--json", "-")
    assert json.loads(output)["embedded_weight_bytes"] == 2112 * 2048 * 4
    code, output = invoke("convert", str(path), "-o", str(tmp_path / "c.onnx"), "--external-data")
    assert code == 0 and "memory:" not in output, output
    code, output = invoke("convert", str(path), "-o", str(tmp_path / "d.onnx"), "--exclude", "mm.*")
    assert code == 0 and "memory:" not in output, output
