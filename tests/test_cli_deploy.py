"""``lmul-onnx library-path`` and ``lmul-onnx doctor``."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime
from click.testing import CliRunner

import lmul_onnx
from lmul_onnx.cli.main import main
from lmul_onnx.runtime import library_api_version, simd_level
from lmul_onnx.testing import portable_unsupported

LMUL_ONNX = str(Path(sys.executable).with_name("lmul-onnx"))


def test_library_path_is_the_loadable_library() -> None:
    result = CliRunner().invoke(main, ["library-path"])
    assert result.exit_code == 0
    path = result.output.strip()
    assert path == lmul_onnx.get_library_path()
    assert hasattr(ctypes.CDLL(path), "RegisterCustomOps")


def test_library_path_missing_is_one_line_exit_1(tmp_path: Path) -> None:
    env = {**os.environ, "LMUL_ONNX_LIBRARY": str(tmp_path / "nowhere.so")}
    result = subprocess.run([LMUL_ONNX, "library-path"], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "nowhere.so is not a file" in result.stderr


def test_doctor_json_report() -> None:
    result = CliRunner().invoke(main, ["doctor", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["onnxruntime"] == onnxruntime.__version__
    assert report["onnxruntime_c_api"] == int(onnxruntime.__version__.split(".")[1])
    assert report["library_c_api"] == 21 and report["compatible"] is True
    assert report["library"] == lmul_onnx.get_library_path()
    assert report["simd"] in {"avx512f", "avx2", "none"} and report["simd"] == simd_level()
    assert report["cpus_available"] >= 1 and report["self_test"] == "ok"
    if portable_unsupported() is None:
        assert report["portable_models"] == "ok"
    else:  # the minimum-versions CI run (onnx 1.18, onnxruntime 1.21)
        assert report["portable_models"].startswith("no: portable models need")


def test_doctor_follows_the_simd_cap() -> None:
    """LMUL_SIMD=none forces the portable loops; the library reports what it chose."""
    env = {**os.environ, "LMUL_SIMD": "none"}
    result = subprocess.run([LMUL_ONNX, "doctor"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert lines["simd"] == "none" and lines["LMUL_SIMD"] == "none" and lines["self-test"] == "ok"
    assert lines["needs"].startswith(f"C API {library_api_version()} (onnxruntime >= 1.21): ok")


def test_info_is_a_hidden_alias_of_doctor() -> None:
    """``info`` (round 1) still works, prints doctor's report and is gone from --help."""
    assert " info " not in CliRunner().invoke(main, ["--help"]).output
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.output
    assert f"library       {lmul_onnx.get_library_path()}" in result.output
    assert "self-test     ok" in result.output
