"""The C++ arithmetic on its own (custom_ops/tests/kernel_tests.cc), without onnxruntime."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "custom_ops" / "kernels"
COMPILER = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler")
@pytest.mark.parametrize("simd", [None, "avx2", "none"])
def test_cpp_kernel_tests(tmp_path_factory: pytest.TempPathFactory, simd: str | None) -> None:
    binary = tmp_path_factory.getbasetemp() / "kernel_tests"
    if not binary.exists():
        sources = [ROOT / "custom_ops" / "tests" / "kernel_tests.cc", *sorted(KERNELS.glob("*.cc"))]
        subprocess.run(
            [
                str(COMPILER),
                "-std=c++17",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-ffp-contract=off",
                f"-I{KERNELS}",
                *map(str, sources),
                "-o",
                str(binary),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    env = {k: v for k, v in os.environ.items() if k != "LMUL_SIMD"}
    if simd:
        env["LMUL_SIMD"] = simd
    completed = subprocess.run([str(binary)], capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.strip().endswith("0 failed")
