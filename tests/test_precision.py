"""``lmul-onnx precision``: the element-level precision table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from lmul_onnx import numerics
from lmul_onnx.offsets import UNBIASED_OFFSETS
from lmul_onnx.precision import precision_rows, precision_table


@pytest.fixture(scope="module")
def table() -> dict[str, float]:
    return precision_table(pairs=200_000, seed=1)


def test_keys_and_orderings(table: dict[str, float]) -> None:
    assert list(table) == [f"lmul_m{m}" for m in (1, 2, 3, 4, 5, 6, 7, 23)] + [
        f"lmul_m{m}_unbiased" for m in (3, 4, 7, 23)
    ] + ["fp8_e4m3", "fp8_e5m2", "bf16"]
    assert table["lmul_m1"] > table["lmul_m2"] > table["lmul_m3"] > table["lmul_m5"]
    assert table["fp8_e5m2"] > table["fp8_e4m3"] > table["bf16"]
    # Rounding an operand to m bits costs at most 2^-(m+1) relative: the m=7..23 rows are
    # dominated by L-Mul's dropped x*y term (about 2.7 % on N(0,1)), bf16 is ~2^-9 relative.
    assert 0.02 < table["lmul_m23"] < 0.035
    assert abs(table["lmul_m7"] - table["lmul_m23"]) < 0.002
    assert 0.001 < table["bf16"] < 0.004


def test_rows_against_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal(200_000).astype(np.float32)
    b = rng.standard_normal(200_000).astype(np.float32)
    exact = a.astype(np.float64) * b
    keep = np.abs(exact) >= 2.0**-6
    lmul4 = numerics.lmul(a[keep], b[keep], mantissa_bits=4).astype(np.float64)
    e4m3 = (
        a[keep].astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
        * b[keep].astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    ).astype(ml_dtypes.float8_e4m3fn)
    table = precision_table(pairs=200_000, seed=1)
    assert table["lmul_m4"] == pytest.approx(np.mean(np.abs(lmul4 - exact[keep]) / np.abs(exact[keep])))
    assert table["fp8_e4m3"] == pytest.approx(
        np.mean(np.abs(e4m3.astype(np.float64) - exact[keep]) / np.abs(exact[keep]))
    )


def test_cli_json() -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("lmul-onnx")), "precision", "--pairs", "20000", "--json", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(completed.stdout)
    assert set(data) >= {"lmul_m1", "lmul_m7", "lmul_m23", "lmul_m4_unbiased", "fp8_e4m3", "fp8_e5m2", "bf16"}
    assert all(0 < row["mean_abs_error"] < 1 and -1 < row["bias"] < 1 for row in data.values())


def test_bias_column_and_unbiased_rows() -> None:
    rows = precision_rows(pairs=200_000, seed=2)
    rng = np.random.default_rng(2)
    a = rng.standard_normal(200_000).astype(np.float32)
    b = rng.standard_normal(200_000).astype(np.float32)
    exact = a.astype(np.float64) * b
    keep = np.abs(exact) >= 2.0**-6
    product = numerics.lmul(a[keep], b[keep], mantissa_bits=4, offset=UNBIASED_OFFSETS[4]).astype(np.float64)
    assert rows["lmul_m4_unbiased"]["bias"] == pytest.approx(np.mean(product / exact[keep] - 1))
    # the paper's offset biases every product upward; the unbiased one removes it
    for m in (3, 4):
        assert rows[f"lmul_m{m}"]["bias"] > 0.04
        assert abs(rows[f"lmul_m{m}_unbiased"]["bias"]) < 0.002
        assert rows[f"lmul_m{m}_unbiased"]["mean_abs_error"] < rows[f"lmul_m{m}"]["mean_abs_error"]
    assert rows["lmul_m4_unbiased"]["mean_abs_error"] < rows["fp8_e4m3"]["mean_abs_error"]
