"""``lmul_onnx.validate`` and ``lmul-onnx validate``: reports, exit codes, localisation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx.inputs import InputError


@pytest.fixture
def branches(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Three parallel x @ W_i branches summed: each node's drift is its own."""
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), f"W{i}") for i in range(3)
    ]
    nodes = [
        helper.make_node("MatMul", ["x", f"W{i}"], [f"h{i}"], name=f"branch{i}/MatMul") for i in range(3)
    ]
    nodes += [helper.make_node("Sum", ["h0", "h1", "h2"], ["logits"], name="sum")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    path = tmp_path / "branches.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_report_and_tolerances(branches: Path) -> None:
    converted = branches.with_name("converted.onnx")
    lmul_onnx.convert(branches, converted)
    loose = lmul_onnx.validate(branches, converted, samples=3, seed=1, atol=100, rtol=0)
    assert loose.passed and loose.samples == 3
    metrics = loose.outputs["logits"]
    assert 0.9 < metrics["cosine"] < 1.0 and 0 < metrics["snr_db"] < 60
    assert "top1_agreement" in metrics  # (batch, classes) output
    strict = lmul_onnx.validate(branches, converted, atol=1e-6, rtol=0)
    assert not strict.passed and strict.outputs["logits"]["mismatches"] > 0
    assert "FAILED" in strict.format_table().splitlines()[-1]
    per_output = lmul_onnx.validate(branches, converted, atol=1e-6, rtol=0, atol_per_output={"logits": 100})
    assert per_output.passed
    assert not lmul_onnx.validate(branches, converted, atol=100, min_cosine=0.99999).passed
    identical = lmul_onnx.validate(branches, branches, atol=0, rtol=0)
    assert identical.passed and identical.outputs["logits"]["max_abs"] == 0


def test_per_node_finds_the_degraded_node(branches: Path) -> None:
    converted = branches.with_name("converted.onnx")
    lmul_onnx.convert(branches, converted, mantissa_bits_for={"branch1": 1})
    report = lmul_onnx.validate(branches, converted, per_node=True, samples=2, atol=100)
    assert [n["name"] for n in report.nodes] == ["branch0/MatMul", "branch1/MatMul", "branch2/MatMul"]
    worst = min(report.nodes, key=lambda n: n["cosine"])
    assert worst["name"] == "branch1/MatMul"
    others = [n["snr_db"] for n in report.nodes if n is not worst]
    assert worst["snr_db"] < min(others) - 3


def test_baselines(branches: Path) -> None:
    converted = branches.with_name("converted.onnx")
    lmul_onnx.convert(branches, converted, mantissa_bits=3)
    report = lmul_onnx.validate(branches, converted, compare=["fp8-e4m3", "fp8-e5m2"], samples=2, atol=100)
    e4m3, e5m2 = report.baselines["fp8-e4m3"]["logits"], report.baselines["fp8-e5m2"]["logits"]
    # fp8 rounding changes the result, and e5m2 (2 mantissa bits) is coarser than e4m3 (3)
    assert e4m3["max_abs"] > 0 and e5m2["snr_db"] < e4m3["snr_db"]


def test_inputs_file_and_save(branches: Path, tmp_path: Path) -> None:
    saved = tmp_path / "inputs.npz"
    first = lmul_onnx.validate(branches, branches, samples=2, seed=5, save_inputs=saved, dims={"batch": 3})
    with np.load(saved) as archive:
        assert sorted(archive.files) == ["0/x", "1/x"] and archive["0/x"].shape == (3, 16)
    again = lmul_onnx.validate(branches, branches, inputs=saved)
    assert again.samples == 2 and first.passed and again.passed
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((1, 16), np.float32))
    with pytest.raises(InputError, match="missing"):
        lmul_onnx.validate(branches, branches, inputs=wrong)
    np.savez(wrong, x=np.zeros((1, 15), np.float32))
    with pytest.raises(InputError, match="shape"):
        lmul_onnx.validate(branches, branches, inputs=wrong)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # The installed console script, as a user runs it.
    return subprocess.run(
        [str(Path(sys.executable).with_name("lmul-onnx")), "validate", *args, "-q"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_exit_codes_and_json(branches: Path, tmp_path: Path) -> None:
    converted = branches.with_name("converted.onnx")
    lmul_onnx.convert(branches, converted)
    report_path = tmp_path / "report.json"
    ok = run_cli(str(branches), str(converted), "--atol", "100", "--json", str(report_path), "--per-node")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "PASSED"
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and set(report["outputs"]["logits"]) >= {
        "max_abs",
        "mean_abs",
        "max_rel",
        "rmse",
        "snr_db",
        "cosine",
        "top1_agreement",
    }
    assert len(report["nodes"]) == 3
    failed = run_cli(str(branches), str(converted), "--atol", "0", "--rtol", "0", "--json", "-")
    assert failed.returncode == 1 and json.loads(failed.stdout)["passed"] is False
    per_output = run_cli(str(branches), str(converted), "--atol", "0", "--atol", "logits:100", "--rtol", "0")
    assert per_output.returncode == 0, per_output.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{m}", "missing.onnx"], "no such file"),
        (["{m}", "{garbage}"], "not a readable ONNX model"),
        (["{m}", "{m}", "--atol", "x"], "not a number"),
        (["{m}", "{m}", "--atol", "nothere:1"], "unknown output"),
        (["{m}", "{m}", "--compare", "fp4"], "unknown baseline"),
        (["{m}", "{m}", "--dim", "batch"], "KEY=VALUE"),
        (["{m}", "{m}", "--input-range", "x=1"], "is not LO:HI"),
        (["{m}", "{m}", "--inputs", "{garbage}"], "cannot read inputs"),
    ],
)
def test_cli_bad_input_exits_2(branches: Path, tmp_path: Path, args: list[str], message: str) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 definitely not onnx")
    completed = run_cli(*[a.format(m=branches, garbage=garbage) for a in args])
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr and "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
