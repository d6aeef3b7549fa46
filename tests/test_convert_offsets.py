"""``convert(..., offset=...)`` and ``lmul-onnx convert --offset/--offset-for``: the SPEC
section 4 attribute on the converted nodes, in the summary and the JSON report, kept by
a second conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import lmul_onnx
from lmul_onnx import numerics
from lmul_onnx.cli.main import main
from lmul_onnx.offsets import UNBIASED_OFFSETS
from lmul_onnx.passes.offsets import OffsetOptions, parse_offset
from lmul_onnx.reference import reference_evaluator
from lmul_onnx.testing import node_offsets, square_of_product_model


@pytest.fixture
def model(rng: np.random.Generator) -> onnx.ModelProto:
    return square_of_product_model(rng.standard_normal((4, 3)))


def test_parse_offset() -> None:
    assert parse_offset("paper") == "paper" and parse_offset(" Unbiased ") == "unbiased"
    assert parse_offset("0.0625") == parse_offset(0.0625) == 0x80000
    assert parse_offset("524288") == parse_offset("0x80000") == parse_offset(524288) == 0x80000
    assert parse_offset("0") == 0 and parse_offset("8388607") == (1 << 23) - 1
    assert parse_offset("1e-2") == round(0.01 * (1 << 23))
    for bad in ("-1", "8388608", "1.0", "-0.5", "inf", "nan", "x", ""):
        with pytest.raises(ValueError):
            parse_offset(bad)
    with pytest.raises(ValueError, match="rounds to 2"):
        parse_offset("0.99999999999")
    with pytest.raises(ValueError):
        parse_offset(True)


def test_paper_is_the_default_and_writes_no_attribute(model: onnx.ModelProto) -> None:
    converted = lmul_onnx.convert(model, mantissa_bits=4)
    assert node_offsets(converted) == {"proj/MatMul": None, "square/Mul": None}


def test_unbiased_and_per_node_values(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    converted = lmul_onnx.convert(
        model,
        mantissa_bits_for={"square": 3},
        mantissa_bits=4,
        offset="unbiased",
        offset_for={"square": 0.0625},
    )
    assert node_offsets(converted) == {"proj/MatMul": UNBIASED_OFFSETS[4], "square/Mul": 0x80000}
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (y,) = lmul_onnx.InferenceSession(converted.SerializeToString()).run(None, {"x": x})
    (expected,) = reference_evaluator(converted).run(None, {"x": x})
    w = numpy_helper.to_array(model.graph.initializer[0])
    h = numerics.lmul_matmul(x, w, mantissa_bits=4, offset=UNBIASED_OFFSETS[4])
    assert np.array_equal(expected, numerics.lmul(h, h, mantissa_bits=3, offset=0x80000))
    assert np.allclose(y, expected, rtol=1e-5, atol=1e-6)
    # the float32 default width takes the table's m = 23 entry
    assert node_offsets(lmul_onnx.convert(model, offset="unbiased"))["square/Mul"] == UNBIASED_OFFSETS[23]


def test_bad_python_options_are_value_errors(model: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="offset"):
        lmul_onnx.convert(model, offset=-5)
    with pytest.raises(ValueError, match="regular expression"):
        OffsetOptions("paper", (("(", 3),))


def test_reconverting_keeps_the_offsets(model: onnx.ModelProto) -> None:
    once = lmul_onnx.convert(model, mantissa_bits=4, offset=0.03)
    twice = lmul_onnx.convert(once, offset="unbiased")
    assert node_offsets(twice) == node_offsets(once) == {"proj/MatMul": 251658, "square/Mul": 251658}


def test_cli_summary_json_and_dry_run(model: onnx.ModelProto, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    runner = CliRunner()
    args = ["convert", str(source), "-o", str(tmp_path / "out.onnx"), "--mantissa-bits", "4", "-q"]
    result = runner.invoke(main, [*args, "--offset", "unbiased", "--offset-for", "square=paper"])
    assert result.exit_code == 0, result.output
    assert f"offset m=4: paper {numerics.paper_offset(4):#08x} (0.12500) on 1 node(s)" in result.output
    assert f"offset m=4: unbiased {UNBIASED_OFFSETS[4]:#08x} (0.05626) on 1 node(s)" in result.output
    result = runner.invoke(main, [*args, "--offset", "0.0625", "--json", "-", "--overwrite"])
    report = json.loads(result.output)
    assert report["offsets"] == [
        {"mantissa_bits": 4, "offset": 0x80000, "value": 0x80000, "choice": "value", "nodes": 2}
    ]
    assert {n["name"]: n["offset"] for n in report["nodes"]} == {
        "proj/MatMul": 0x80000,
        "square/Mul": 0x80000,
    }
    assert node_offsets(onnx.load(tmp_path / "out.onnx")) == {"proj/MatMul": 0x80000, "square/Mul": 0x80000}
    result = runner.invoke(main, ["convert", str(source), "--dry-run", "--offset", "unbiased", "-q"])
    assert f"offset={UNBIASED_OFFSETS[23]:#x}" in result.output
    assert not (tmp_path / "m.lmul.onnx").exists()
