"""Peer suite: ONNX's own backend test models for MatMul / Gemm / Mul / Conv / ConvTranspose.

Each model is converted, run in onnxruntime with the custom-op library, and compared
with an evaluation of the *converted* graph by ``onnx.reference`` using the numpy oracle
for the ``lmul`` ops. Integer models must come through unconverted and exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx.backend.test.case.node import collect_testcases

import lmul_onnx
from lmul_onnx.reference import reference_evaluator

# Single-node models of the converted op types (Conv's are named test_basic_conv_* and
# test_conv_with_*; ConvInteger, QLinearConv and DeformConv are other ops).
PREFIXES = (
    "test_matmul_",
    "test_gemm_",
    "test_mul",
    "test_basic_conv_",
    "test_conv_with_",
    "test_convtranspose",
)


def _cases() -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np_err = np.seterr(all="ignore")
        try:
            cases = collect_testcases("")
        finally:
            np.seterr(**np_err)
    return {
        c.name: c
        for c in cases
        if c.name.startswith(PREFIXES) and not c.name.startswith("test_matmulinteger")
    }


CASES = _cases()


def test_peer_suite_is_not_empty() -> None:
    assert len([n for n in CASES if n.startswith("test_gemm")]) >= 10
    # onnx 1.18 (the oldest supported) ships 3 float MatMul cases, newer releases more.
    assert len([n for n in CASES if n.startswith("test_matmul")]) >= 3
    # Conv: 6 cases; ConvTranspose: 9 (the group_2 cases came later).
    assert len([n for n in CASES if CASES[n].model.graph.node[0].op_type == "Conv"]) >= 6
    assert len([n for n in CASES if n.startswith("test_convtranspose")]) >= 9


def _is_float(name: str) -> bool:
    return CASES[name].data_sets[0][0][0].dtype == np.float32


# Float models at full width and at 3 mantissa bits; integer models once (no mantissa).
PARAMS = [(name, bits) for name in sorted(CASES) for bits in ((None, 3) if _is_float(name) else (None,))]


@pytest.mark.parametrize(("name", "mantissa_bits"), PARAMS)
def test_backend_model(name: str, mantissa_bits: int | None) -> None:
    case = CASES[name]
    inputs, expected_standard = case.data_sets[0]
    is_float = _is_float(name)
    converted = lmul_onnx.convert(case.model, mantissa_bits=mantissa_bits)
    lmul_nodes = [n for n in converted.graph.node if n.domain == "lmul"]
    assert len(lmul_nodes) == (1 if is_float else 0)
    feeds = {i.name: x for i, x in zip(case.model.graph.input, inputs, strict=True)}
    native = lmul_onnx.InferenceSession(converted.SerializeToString()).run(None, feeds)
    reference = reference_evaluator(converted).run(None, feeds)
    for got, want, standard in zip(native, reference, expected_standard, strict=True):
        assert got.shape == standard.shape and got.dtype == standard.dtype
        if is_float:
            scale = np.abs(want).max() if want.size else 1.0
            assert np.allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
        else:
            assert np.array_equal(got, standard)
