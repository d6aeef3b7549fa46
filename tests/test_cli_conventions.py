"""Issue 16's command-line items: start-up without heavy imports, one convention for
``--json`` and for lists, validate's class-score rule, and energy's messages."""

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

import lmul_onnx
from lmul_onnx.cli.main import main

HEAVY = ("numpy", "onnx", "onnxruntime", "onnx_ir", "onnxscript", "ml_dtypes")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["convert", "--help"],
        ["validate", "--help"],
        ["energy", "--bogus"],
        ["convert"],
        ["--version"],
    ],
)
def test_help_and_usage_errors_import_nothing_heavy(argv: list[str]) -> None:
    """Start-up cost is the imports: --help and usage errors load click only."""
    script = (
        "import sys\n"
        "from lmul_onnx.cli.main import main\n"
        "code = 0\n"
        "try:\n"
        f"    main({argv!r}, prog_name='lmul-onnx')\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), code)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", check=False
    )
    assert "HEAVY [] " in completed.stdout, completed.stdout + completed.stderr


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(16)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "h"], ["y"], name="sq"),
            helper.make_node("Shape", ["y"], ["y_shape"], name="shape"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6]),
            helper.make_tensor_value_info("y_shape", TensorProto.INT64, [2]),
        ],
        [w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.mark.parametrize(
    "verb",
    [
        ["convert", "{m}", "-o", "{d}/c.onnx", "--dim", "batch=2"],
        ["validate", "{m}", "{m}"],
        ["energy", "{m}", "--dim", "batch=2"],
        ["precision", "--pairs", "2000"],
    ],
)
def test_json_path_or_dash_on_every_verb(model: Path, tmp_path: Path, verb: list[str]) -> None:
    args = [a.format(m=model, d=tmp_path) for a in verb]
    code, output = invoke(*args, "--json", tmp_path / "r.json")
    assert code == 0, output
    from_file = json.loads((tmp_path / "r.json").read_text(), parse_constant=_refuse)
    if args[0] == "convert":
        (tmp_path / "c.onnx").unlink()
        (tmp_path / "r.json").unlink()
    code, output = invoke(*args, "--json", "-")
    assert code == 0, output
    from_stdout = json.loads(output, parse_constant=_refuse)
    assert from_stdout.keys() == from_file.keys()
    code, output = invoke(*args, "--json")
    assert code == 2 and "requires an argument" in output


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in JSON")


def test_lists_repeat_or_take_commas(model: Path, tmp_path: Path) -> None:
    repeated = invoke("convert", model, "--ops", "MatMul", "--ops", "Mul", "--dry-run", "--json", "-")
    joined = invoke("convert", model, "--ops", "MatMul,Mul", "--dry-run", "--json", "-")
    assert repeated == joined and repeated[0] == 0
    lmul_onnx.convert(str(model), str(tmp_path / "c.onnx"))
    reports = [
        json.loads(invoke("validate", model, tmp_path / "c.onnx", *options, "--json", "-")[1])["baselines"]
        for options in (["--compare", "fp8-e4m3", "--compare", "bf16"], ["--compare", "fp8-e4m3,bf16"])
    ]
    assert list(reports[0]) == list(reports[1]) == ["fp8-e4m3", "bf16"]


def _scores_model(path: Path, output: str, shape: list[int]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [output], name="id")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.mark.parametrize(
    ("output", "options", "top1"),
    [
        ("logits", [], True),
        ("class_scores", [], True),
        ("sentence_embedding", [], False),  # 2-D, yet not class scores
        ("sentence_embedding", ["--logits", "sentence_embedding"], True),
    ],
)
def test_top1_only_for_class_scores(tmp_path: Path, output: str, options: list[str], top1: bool) -> None:
    path = _scores_model(tmp_path / "m.onnx", output, [2, 10])
    code, text = invoke("validate", path, path, *options, "--json", "-")
    assert code == 0, text
    assert ("top1_agreement" in json.loads(text)["outputs"][output]) is top1


def test_integer_outputs_are_marked(model: Path) -> None:
    code, text = invoke("validate", model, model, "--json", "-")
    outputs = json.loads(text)["outputs"]
    assert outputs["y_shape"]["dtype"] == "int64" and "top1_agreement" not in outputs["y_shape"]
    code, text = invoke("validate", model, model)
    assert code == 0 and "y_shape (int64)" in text


def test_energy_names_the_dimensions_to_bind(model: Path) -> None:
    code, output = invoke("energy", model)
    assert code == 2
    assert output.strip() == "Error: 2 node(s), all of unknown shape: bind batch with --dim NAME=N"


def test_energy_float32_report_has_no_assumption_notes(model: Path) -> None:
    code, output = invoke("energy", model, "--dim", "batch=2")
    assert code == 0 and "note:" not in output and "L-Mul everywhere saves 0.0 %" not in output
    code, output = invoke("energy", model, "--dim", "batch=2", "--mantissa-bits", "3")
    assert "note: an L-Mul of 12 bits is priced at int32_add x width / 32" in output


def test_energy_mantissa_bits_change_the_estimate(model: Path, tmp_path: Path) -> None:
    savings = []
    for bits in ([], ["--mantissa-bits", "3"]):
        code, output = invoke(
            "convert", model, "-o", tmp_path / f"c{len(bits)}.onnx", "--dim", "batch=2", *bits, "--json", "-"
        )
        assert code == 0, output
        savings.append(json.loads(output)["energy"]["saving_percent"])
    assert savings[1] > savings[0] > 0


def test_convert_summary_without_candidates(tmp_path: Path) -> None:
    path = _scores_model(tmp_path / "m.onnx", "y", [2, 3])
    code, output = invoke("convert", path, "--dim", "batch=1", "-q")
    assert code == 2 and "no such symbolic input dimension" in output
    code, output = invoke("convert", path, "-q")
    assert code == 0
    assert output.strip().splitlines()[-1] == "energy: nothing converted, nothing saved"


def test_convert_energy_line_names_the_bound_dimensions(model: Path, tmp_path: Path) -> None:
    # The estimate depends on the shapes --dim binds: the line says which it counted for.
    code, output = invoke("convert", model, "-o", tmp_path / "a.onnx", "--dim", "batch=2")
    assert code == 0
    line = next(text for text in output.splitlines() if text.startswith("energy"))
    assert line.startswith("energy (Horowitz 45 nm table, batch=2): the ")
    code, output = invoke("convert", model, "-o", tmp_path / "b.onnx", "--dim", "batch=3")
    assert "energy (Horowitz 45 nm table, batch=3): the " in output
