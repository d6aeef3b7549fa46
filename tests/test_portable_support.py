"""Where onnx or onnxruntime predate BitCast (opset 26), --portable says so and writes
nothing; the library path is unaffected. Runs in the minimum-versions CI run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from lmul_onnx.testing import portable_unsupported

pytestmark = pytest.mark.skipif(
    onnx.defs.onnx_opset_version() >= 26,
    reason="this onnx writes opset 26: tests/test_portable.py runs instead",
)


def test_convert_portable_refuses_with_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), source)
    lmul_onnx_cli = str(Path(sys.executable).with_name("lmul-onnx"))
    result = subprocess.run(
        [lmul_onnx_cli, "convert", str(source), "--portable", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "portable models need onnx >= 1.21" in result.stderr
    assert not (tmp_path / "model.lmul.onnx").exists()
    assert portable_unsupported() is not None
