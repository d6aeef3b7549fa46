"""Issue 11's numbered cases, one test (or a few) each: output-path safety, models
onnxruntime would refuse, validate's outcomes, inputs, streaming and the reports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import inputs as model_inputs
from lmul_onnx.cli.main import main
from lmul_onnx.validate import ValidationReport, _fit


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def mlp(symbolic: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    batch = "batch" if symbolic else 2
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "h"], ["y"], name="sq"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 6])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture
def external(tmp_path: Path) -> Path:
    """A model whose weights live in ``weights.bin`` beside it."""
    path = tmp_path / "model.onnx"
    onnx.save(mlp(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def _runs(path: Path) -> None:
    session = lmul_onnx.InferenceSession(str(path))
    session.run(None, {"x": np.ones((2, 8), np.float32)})


# 1. The input's own external data is never an output, however it is spelled.
@pytest.mark.parametrize("spelling", ["weights.bin", "./weights.bin", "sub/../weights.bin"])
def test_1_output_over_the_inputs_external_data_is_refused(external: Path, spelling: str) -> None:
    (external.parent / "sub").mkdir()
    weights = (external.parent / "weights.bin").read_bytes()
    code, output = invoke("convert", external, "-o", f"{external.parent}/{spelling}", "--overwrite")
    assert code == 2
    assert "external data of the input model" in one_line(output)
    assert (external.parent / "weights.bin").read_bytes() == weights
    _runs(external)


def test_1_data_file_over_the_inputs_external_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp(), path, save_as_external_data=True, location="x.onnx.data", size_threshold=0)
    data = (tmp_path / "x.onnx.data").read_bytes()
    code, output = invoke("convert", path, "-o", tmp_path / "x.onnx", "--overwrite")
    assert code == 2 and "external data" in one_line(output)
    assert (tmp_path / "x.onnx.data").read_bytes() == data
    assert not (tmp_path / "x.onnx").exists()


# 2. An output that is a symbolic link is refused; its target stays as it was.
def test_2_output_through_a_symlink_is_refused(external: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.onnx").write_text("someone's file\n")
    link = tmp_path / "link.onnx"
    os.symlink(elsewhere / "target.onnx", link)
    for extra in ([], ["--overwrite"]):
        code, output = invoke("convert", external, "-o", link, *extra)
        assert code == 2 and "symbolic link" in one_line(output)
    assert (elsewhere / "target.onnx").read_text() == "someone's file\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target.onnx"]


# 3. Existing files are replaced only with --overwrite; every written file is named.
def test_3_existing_output_needs_overwrite(external: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    out.write_text("precious\n")
    code, output = invoke("convert", external, "-o", out)
    assert code == 2 and "--overwrite" in one_line(output)
    assert out.read_text() == "precious\n"


def test_3_existing_data_file_needs_overwrite(external: Path, tmp_path: Path) -> None:
    (tmp_path / "out.onnx.data").write_text("unrelated\n")
    code, output = invoke("convert", external, "-o", tmp_path / "out.onnx")
    assert code == 2 and "out.onnx.data exists; pass --overwrite" in one_line(output)
    assert not (tmp_path / "out.onnx").exists()
    code, output = invoke("convert", external, "-o", tmp_path / "out.onnx", "--overwrite", "-q")
    assert code == 0, output
    assert f"wrote {tmp_path / 'out.onnx'}, {tmp_path / 'out.onnx.data'}" in output
    _runs(tmp_path / "out.onnx")


def test_3_json_names_every_written_file(external: Path, tmp_path: Path) -> None:
    code, output = invoke("convert", external, "-o", tmp_path / "o.onnx", "--json", "-")
    assert code == 0, output
    report = json.loads(output)
    assert report["written"] == [str(tmp_path / "o.onnx"), str(tmp_path / "o.onnx.data")]


def test_3_nothing_written_on_failure(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    target = tmp_path / "new" / "deeper" / "o.onnx"
    code, _ = invoke("convert", tmp_path / "m.onnx", "-o", target, "--mantissa-bits-for", "mm=x")
    assert code == 2
    assert not (tmp_path / "new").exists()


# 5. Legacy broadcast Mul and attributes onnxruntime refuses are left alone, with the reason.
def _one_node_model(node: onnx.NodeProto, opset: int, inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def test_5_legacy_broadcast_mul_is_skipped(tmp_path: Path) -> None:
    node = helper.make_node("Mul", ["a", "b"], ["y"], name="legacy", broadcast=1, axis=0)
    model = _one_node_model(
        node,
        6,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
        ],
    )
    onnx.save(model, tmp_path / "m.onnx")
    code, output = invoke("convert", tmp_path / "m.onnx", "--dry-run", "--json", "-")
    if code == 0:
        (record,) = json.loads(output)["nodes"]
        assert not record["converted"]
        assert "legacy Mul attribute" in record["reason"]
    else:
        assert code == 2 and one_line(output)


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (helper.make_node("Gemm", ["a", "b"], ["y"], name="g", alpha="1.5"), "alpha"),
        (helper.make_node("Gemm", ["a", "b"], ["y"], name="g", transB=[1]), "transB"),
        (helper.make_node("MatMul", ["a", "b"], ["y"], name="m", frobnicate=3), "frobnicate"),
    ],
)
def test_5_models_onnxruntime_refuses_do_not_become_runnable(
    tmp_path: Path, node: onnx.NodeProto, why: str
) -> None:
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 4]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 4]),
    ]
    model = _one_node_model(node, 17, inputs)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises several pybind types
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx.save(model, tmp_path / "m.onnx")
    code, output = invoke("convert", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--json", "-")
    if code == 2:
        one_line(output)
        assert not (tmp_path / "o.onnx").exists()
        return
    assert code == 0, output
    (record,) = json.loads(output)["nodes"]
    assert not record["converted"] and why in record["reason"]
    with pytest.raises(Exception):  # noqa: B017
        lmul_onnx.InferenceSession(str(tmp_path / "o.onnx"))


# 7. onnxruntime load and run failures are bad input: exit 2, one line.
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: [helper.make_node("Frobnicate", ["x"], ["y"])], "onnxruntime cannot load it"),
        (
            lambda: [helper.make_node("Add", ["x", "z"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
            "onnxruntime cannot load it",
        ),
    ],
)
def test_7_models_onnxruntime_cannot_load_exit_2(tmp_path: Path, build, message: str) -> None:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        build(),
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
        tmp_path / "m.onnx",
    )
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert code == 2 and str(tmp_path / "m.onnx") in one_line(output)
    assert message in output or "invalid model" in output


def test_7_converted_model_the_kernels_refuse_exit_2(tmp_path: Path) -> None:
    """onnx.checker cannot judge the lmul domain; the kernels refuse mantissa_bits=99 when
    onnxruntime creates the session: bad input, not an accuracy failure."""
    onnx.save(mlp(), tmp_path / "m.onnx")
    converted = lmul_onnx.convert(str(tmp_path / "m.onnx"))
    converted.graph.node[0].attribute.append(helper.make_attribute("mantissa_bits", 99))
    onnx.save(converted, tmp_path / "c.onnx")
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "c.onnx")
    assert code == 2 and "onnxruntime cannot load it" in one_line(output)


@pytest.mark.parametrize(
    "options",
    [["--dim", "batch=-1"], ["--input-range", "x=300:0"], ["--per-node", "--compare", "fp4"]],
)
def test_7_bad_options_exit_2(tmp_path: Path, options: list[str]) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"))
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "c.onnx", *options)
    assert code == 2 and one_line(output)


def test_7_pickled_npz_exit_2(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "i.npz", x=np.array([object()], dtype=object))
    code, output = invoke(
        "validate", tmp_path / "m.onnx", tmp_path / "m.onnx", "--inputs", tmp_path / "i.npz"
    )
    assert code == 2 and "i.npz" in one_line(output)


def test_7_json_and_inputs_into_a_new_folder(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    report, saved = tmp_path / "new" / "r.json", tmp_path / "new2" / "i.npz"
    code, output = invoke(
        "validate", tmp_path / "m.onnx", tmp_path / "m.onnx", "--json", report, "--save-inputs", saved
    )
    assert code == 0, output
    assert json.loads(report.read_text())["passed"] is True
    assert list(np.load(saved).keys()) == ["x"]


def test_7_two_unrelated_models_per_node_exit_2(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"))
    other = mlp()
    for node in other.graph.node:
        node.output[0] = node.output[0] if node.output[0] == "y" else "other_h"
        node.input[:] = ["other_h" if i == "h" else i for i in node.input]
    onnx.save(other, tmp_path / "other.onnx")
    code, output = invoke("validate", tmp_path / "other.onnx", tmp_path / "c.onnx", "--per-node")
    assert code == 2 and "is CONVERTED a conversion of ORIGINAL" in one_line(output)


# 8. A converted model that fails at run time, or whose shapes differ: a FAILED report.
def _nan_pair(tmp_path: Path, reshape: bool) -> tuple[Path, Path]:
    """The converted model scales by -1 where the original scales by +1: Sqrt then makes
    NaN, first seen at the converted node "proj"; with ``reshape`` a shape computed from
    the NaN then fails a Reshape."""

    def model(lmul: bool) -> onnx.ModelProto:
        domain = "lmul" if lmul else ""
        c = numpy_helper.from_array(np.full((4,), -1.0 if lmul else 1.0, np.float32), "c")
        nodes = [
            helper.make_node("LMul" if lmul else "Mul", ["x", "c"], ["h"], name="scale", domain=domain),
            helper.make_node("Sqrt", ["h"], ["s"], name="root"),
            helper.make_node(
                "LMulMatMul" if lmul else "MatMul", ["s", "W"], ["y"], name="proj", domain=domain
            ),
        ]
        inits = [c, numpy_helper.from_array(np.ones((4, 4), np.float32), "W")]
        output = "y"
        if reshape:
            nodes += [
                helper.make_node("ReduceSum", ["s"], ["t"], keepdims=1, name="sum"),
                helper.make_node("Reshape", ["t", "one"], ["t1"], name="flat"),
                helper.make_node("Mul", ["t1", "zero"], ["t0"], name="zeroed"),  # NaN stays NaN
                helper.make_node("Add", ["t0", "two"], ["t2"], name="plus_two"),
                helper.make_node("Cast", ["t2"], ["n"], to=TensorProto.INT64, name="cast"),
                helper.make_node("Concat", ["n", "rest"], ["shape"], axis=0, name="cat"),
                helper.make_node("Reshape", ["y", "shape"], ["z"], name="reshape"),
            ]
            inits += [
                numpy_helper.from_array(np.array([1], np.int64), "one"),
                numpy_helper.from_array(np.array([-1], np.int64), "rest"),
                numpy_helper.from_array(np.array([0], np.float32), "zero"),
                numpy_helper.from_array(np.array([2], np.float32), "two"),
            ]
            output = "z"
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            inits,
        )
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("lmul", 1)] if lmul else [])
        return helper.make_model(graph, opset_imports=opsets, ir_version=9)

    onnx.save(model(False), tmp_path / "o.onnx")
    onnx.save(model(True), tmp_path / "c.onnx")
    np.savez(tmp_path / "pos.npz", x=np.full((2, 4), 2.0, np.float32))
    return tmp_path / "o.onnx", tmp_path / "c.onnx"


def test_8_nan_in_converted_names_first_node(tmp_path: Path) -> None:
    original, converted = _nan_pair(tmp_path, reshape=False)
    code, output = invoke("validate", original, converted, "--inputs", tmp_path / "pos.npz")
    assert code == 1
    assert "NaN/Inf first appear at converted node proj" in output
    assert output.strip().splitlines()[-1].startswith("FAILED (y outside tolerance")


def test_8_run_time_failure_is_a_failed_report(tmp_path: Path) -> None:
    original, converted = _nan_pair(tmp_path, reshape=True)
    code, output = invoke("validate", original, converted, "--inputs", tmp_path / "pos.npz", "--json", "-")
    assert code == 1, output
    report = json.loads(output)
    assert report["passed"] is False
    assert "fails at run time on sample 0" in report["failure"] and "reshape" in report["failure"]
    assert report["nonfinite_node"] == "proj"
    assert report["outputs"]["z"]["passed"] is False


def test_8_output_shapes_differ_is_a_failed_report(tmp_path: Path) -> None:
    def model(length: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Slice", ["x", "start", "end"], ["y"], name="cut")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(np.array([0], np.int64), "start"),
                numpy_helper.from_array(np.array([length], np.int64), "end"),
            ],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    onnx.save(model(3), tmp_path / "a.onnx")
    onnx.save(model(5), tmp_path / "b.onnx")
    code, output = invoke("validate", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert code == 1, output
    assert "FAILED (y: output shapes differ: (3,) vs (5,) on sample 0)" in output


# 9. Names and values of --dim / --input-range are checked; defaults are stated.
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dim", "btach=2"], "no such symbolic input dimension; the model's are batch"),
        (["--input-range", "z=0:1"], "no such input; the model's are x"),
        (["--dim", "batch=0"], "a dimension must be at least 1"),
    ],
)
def test_9_misspelled_or_empty_refused(tmp_path: Path, options: list[str], message: str) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "m.onnx", *options)
    assert code == 2 and message in one_line(output)


def test_9_defaults_are_stated(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT, name="cast")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
        tmp_path / "m.onnx",
    )
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert code == 0, output
    first = output.splitlines()[0]
    assert first == "inputs: ids int64[1x16] integers [0, 100) (default batch=1, sequence=16, values)"
    code, output = invoke(
        "validate",
        tmp_path / "m.onnx",
        tmp_path / "m.onnx",
        "--dim",
        "sequence=4",
        "--input-range",
        "ids=5:9",
    )
    assert output.splitlines()[0] == "inputs: ids int64[1x4] integers [5, 9) (default batch=1)"


# 10. Inputs are made one sample at a time; long runs show a progress bar on a terminal.
def test_10_samples_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    events: list[str] = []
    generate = model_inputs.generate

    def logged(specs, options, sample=0):  # type: ignore[no-untyped-def]
        events.append(f"made {sample}")
        return generate(specs, options, sample)

    monkeypatch.setattr(model_inputs, "generate", logged)

    def progress(message: str, done: int | None = None, total: int | None = None) -> None:
        if done is not None:
            events.append(f"ran {done - 1}")

    report = lmul_onnx.validate(
        tmp_path / "m.onnx", tmp_path / "m.onnx", samples=4, progress=progress, save_inputs=tmp_path / "s.npz"
    )
    assert report.samples == 4
    assert events == [f"{what} {i}" for i in range(4) for what in ("made", "ran")]
    count, samples = model_inputs.npz_samples(
        tmp_path / "s.npz", model_inputs.signature(lmul_onnx.InferenceSession(str(tmp_path / "m.onnx")))
    )
    assert count == 4 and len(list(samples)) == 4


def test_10_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmul_onnx.cli import validate as cli_validate

    monkeypatch.setattr(cli_validate, "is_tty", lambda: True)
    progress = cli_validate.Progress(quiet=False)
    for done in range(1, 11):
        progress("sample", done, 10)
    err = capsys.readouterr().err
    assert "\r[" in err and "10/10 samples" in err


# 11. Reports: strict JSON, per-node diagnostics, worst-first order, names, baselines, quiet.
def test_11_json_has_no_infinity_or_nan(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    code, output = invoke("validate", tmp_path / "m.onnx", tmp_path / "m.onnx", "--json", "-")
    assert code == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    report = json.loads(output, parse_constant=refuse)
    assert report["outputs"]["y"]["snr_db"] is None
    assert report["outputs"]["y"]["nonfinite"] == {"snr_db": "inf"}


def test_11_per_node_entries_are_diagnostics(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"), mantissa_bits=3)
    report = lmul_onnx.validate(tmp_path / "m.onnx", tmp_path / "c.onnx", per_node=True, atol=1000)
    assert [n["name"] for n in report.nodes] == ["mm", "sq"]
    for node in report.nodes:
        assert "passed" not in node and "mismatches" not in node
        assert node["snr_db"] > 0


def test_11_sort_worst_ranks_by_snr_nan_first() -> None:
    def node(name: str, snr: float, cosine: float) -> dict:
        return {
            "name": name,
            "op_type": "LMul",
            "output": name,
            "snr_db": snr,
            "cosine": cosine,
            "max_abs": 0.0,
        }

    report = ValidationReport({}, {}, {}, 1, 0)
    report.nodes = [
        node("fine", 40.0, 0.99999),
        node("nan", math.nan, math.nan),
        node("loud", -23.0, 0.9995),
        node("ok", 20.0, 0.99),
    ]
    report.sort_nodes("worst")
    assert [n["name"] for n in report.nodes] == ["nan", "loud", "ok", "fine"]


def test_11_long_names_keep_their_end_with_an_ellipsis() -> None:
    name = "/model/layers.11/self_attn/MatMul_1"
    assert _fit(name, 20) == "…" + name[-19:]
    assert len(_fit(name, 20)) == 20
    assert _fit("short", 20) == "short"


def test_11_per_node_table_has_baseline_columns(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"))
    code, output = invoke(
        "validate",
        tmp_path / "m.onnx",
        tmp_path / "c.onnx",
        "--per-node",
        "--compare",
        "fp8-e4m3",
        "--atol",
        "100",
        "--rtol",
        "100",
    )
    assert code == 0, output
    assert "snr fp8-e4m3" in output
    report = lmul_onnx.validate(tmp_path / "m.onnx", tmp_path / "c.onnx", per_node=True, compare=["fp8-e4m3"])
    assert all("snr_db_fp8-e4m3" in n and "cosine_fp8-e4m3" in n for n in report.nodes)


def test_11_version_converter_is_silent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"))
    capfd.readouterr()
    lmul_onnx.validate(tmp_path / "m.onnx", tmp_path / "c.onnx", compare=["fp8-e4m3", "fp8-e5m2"])
    captured = capfd.readouterr()
    assert "target version" not in captured.out + captured.err


def test_11_convert_quiet_prints_nothing(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("lmul-onnx")), "convert", str(tmp_path / "m.onnx"), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 0
    assert completed.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lmul.onnx", "m.onnx"]


def test_11_inference_session_with_session_options(tmp_path: Path) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    lmul_onnx.convert(str(tmp_path / "m.onnx"), str(tmp_path / "c.onnx"))
    options = lmul_onnx.session_options()
    session = lmul_onnx.InferenceSession(str(tmp_path / "c.onnx"), options)
    again = lmul_onnx.InferenceSession(str(tmp_path / "c.onnx"), lmul_onnx.session_options(options))
    feeds = {"x": np.ones((2, 8), np.float32)}
    assert np.array_equal(session.run(None, feeds)[0], again.run(None, feeds)[0])


def test_11_validate_writes_no_model_copies(external: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    converted = external.parent / "c.onnx"
    lmul_onnx.convert(str(external), str(converted))
    before = sorted(p.name for p in external.parent.iterdir())

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate wrote a model file")

    monkeypatch.setattr(onnx, "save", refuse)
    monkeypatch.setattr(onnx, "save_model", refuse)
    report = lmul_onnx.validate(external, converted, per_node=True, compare=["fp8-e4m3"], atol=100, rtol=100)
    assert report.passed
    assert sorted(p.name for p in external.parent.iterdir()) == before
