"""The matmul micro-kernel variants (custom_ops/kernels/lmul_gemm.h).

The pre-scan must pick the one-add kernels only on data where they are exact, and
every variant and SIMD width must give the same bits as the portable loop (they sum
each output in the same order).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lmul_onnx.testing import matmul_variant

GENERAL, ADD, ADD_MASKED_A, ADD_MASKED_B, ADD_MASKED_AB, NORMAL = 0, 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def choose() -> Callable[..., int]:
    return matmul_variant


def variant(choose: Callable[..., int], a: np.ndarray, b: np.ndarray, m: int = 23, offset: int = -1) -> int:
    return choose(a, b, m, offset)


def has_simd(choose: Callable[..., int]) -> bool:
    one = np.ones(4, np.float32)
    return variant(choose, one, one) == ADD


def test_variant_selection(choose: Callable[..., int], rng: np.random.Generator) -> None:
    if not has_simd(choose):
        pytest.skip("no AVX2/AVX-512 on this CPU: only the portable loop exists")
    a = rng.standard_normal((64, 32)).astype(np.float32)
    b = rng.standard_normal((32, 16)).astype(np.float32)
    assert variant(choose, a, b) == ADD
    assert variant(choose, a, b, m=3) == ADD
    assert variant(choose, np.maximum(a, 0), b) == ADD_MASKED_A
    assert variant(choose, np.zeros_like(a), b) == ADD_MASKED_A
    subnormal = a.copy()
    subnormal[0, 0] = 1e-40
    assert variant(choose, subnormal, b) == ADD_MASKED_A  # subnormals are zeros (SPEC 1)
    assert variant(choose, a, np.maximum(b, 0)) == ADD_MASKED_B
    assert variant(choose, np.maximum(a, 0), np.maximum(b, 0)) == ADD_MASKED_AB
    # data that must not take a fast kernel
    assert variant(choose, a, np.zeros_like(b)) == GENERAL  # no B range to derive stand-ins from
    for special in (np.inf, -np.inf, np.nan):
        bad = a.copy()
        bad[3, 3] = special
        assert variant(choose, bad, b) == GENERAL
        assert variant(choose, b, bad) == GENERAL
    # products may overflow or underflow: the portable loop, with only those checks when
    # every operand is a normal number, with every check otherwise
    assert variant(choose, a * 1e20, b * 1e20) == NORMAL
    assert variant(choose, a * 1e-20, b * 1e-20) == NORMAL
    assert variant(choose, np.maximum(a, 0) * 1e20, b * 1e20) == GENERAL
    assert variant(choose, a, b, m=0) == -1


RUNNER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    import lmul_onnx

    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 70)).astype(np.float32)
    b = rng.standard_normal((70, 133)).astype(np.float32)
    cases = {
        "normal": (a, b), "relu": (np.maximum(a, 0), b), "small_m": (a[:3], b),
        "zeros_b": (a, np.where(np.abs(b) < 0.3, 0, b).astype(np.float32)),
        "zeros_ab": (np.maximum(a, 0), np.where(np.abs(b) < 0.3, np.float32(1e-41), b).astype(np.float32)),
        "spread": (a * np.float32(1e-12), (b * np.exp(rng.uniform(-20, 20, b.shape))).astype(np.float32)),
        "overflow": ((a * np.exp(rng.uniform(-60, 60, a.shape))).astype(np.float32),
                     (b * np.exp(rng.uniform(-60, 60, b.shape))).astype(np.float32)),
        "batched": (rng.standard_normal((3, 9, 70)).astype(np.float32), b),
        "wide": (a * np.float32(1e18), b * np.float32(1e19)),
    }
    # Small M against a per-call B (custom_ops/kernels/lmul_small_m.h): every M up to 8,
    # N off the vector width, heads, and each special value.
    specials = {"inf": np.inf, "nan": np.nan, "zero": 0.0, "subnormal": 1e-41, "huge": 3e38}
    for rows in range(1, 10):
        cases[f"m{rows}"] = (a[:rows], b)
    for name, value in specials.items():
        x, y = a[:2].copy(), b.copy()
        y[5, 7] = value
        cases[f"m2_b_{name}"] = (x, y)
        x, y = a[:1].copy(), b.copy()
        x[0, 9] = value
        cases[f"m1_a_{name}"] = (x, y)
    cases["m3_zeros"] = (np.maximum(a[:3], 0), np.where(np.abs(b) < 0.3, -0.0, b).astype(np.float32))
    cases["m1_overflow"] = (a[:1] * np.float32(1e20), b * np.float32(1e20))
    cases["heads"] = (rng.standard_normal((12, 1, 70)).astype(np.float32),
                      rng.standard_normal((12, 70, 37)).astype(np.float32))
    cases["long_rows"] = (rng.standard_normal((2, 70)).astype(np.float32),
                          rng.standard_normal((70, 700)).astype(np.float32))
    # Batched attention against a per-call B (custom_ops/kernels/lmul_matmul.cc): q.K^T,
    # p.V with narrow heads (N <= 32: narrow panels), causal probabilities (zeros in A),
    # and a B with zeros (stand-ins in the folded panels).
    heads = rng.standard_normal((4, 30, 40)).astype(np.float32)
    probabilities = np.tril(rng.uniform(0.01, 1, (4, 30, 30))).astype(np.float32)
    cases["attention"] = (heads, rng.standard_normal((4, 40, 70)).astype(np.float32))
    cases["attention_narrow"] = (heads, rng.standard_normal((4, 40, 32)).astype(np.float32))
    cases["attention_causal"] = (probabilities, rng.standard_normal((4, 30, 20)).astype(np.float32))
    cases["attention_zeros_b"] = (heads, np.where(rng.random((4, 40, 32)) < 0.2, 0,
                                                  rng.standard_normal((4, 40, 32))).astype(np.float32))
    results = {}
    for name, (x, y) in cases.items():
        for constant in (False, True):
            inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(x.shape))]
            inits = [numpy_helper.from_array(y, "B")] if constant else []
            if not constant:
                inputs.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, list(y.shape)))
            for op, attrs in (("LMulMatMul", {}), ("LMulMatMul", {"mantissa_bits": 4}),
                              ("LMulMatMul", {"mantissa_bits": 1}),
                              ("LMulMatMul", {"mantissa_bits": 3, "offset": 0}),
                              ("LMulMatMul", {"offset": 8388607}),
                              ("LMulMatMul", {"mantissa_bits": 4, "offset": 471942})):
                node = helper.make_node(op, ["A", "B"], ["Y"], domain="lmul", **attrs)
                out = helper.make_tensor_value_info("Y", 1, None)
                graph = helper.make_graph([node], "g", inputs, [out], inits)
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                          helper.make_opsetid("lmul", 1)], ir_version=9)
                feeds = {"A": x} if constant else {"A": x, "B": y}
                for threads in (1, 2) if not attrs else (1,):
                    options = onnxruntime.SessionOptions()
                    options.intra_op_num_threads = threads
                    session = lmul_onnx.InferenceSession(model.SerializeToString(), options)
                    results[f"{name}_{constant}_{attrs}_{threads}"] = session.run(None, feeds)[0]
    gemm_b = rng.standard_normal((133, 70)).astype(np.float32)
    node = helper.make_node("LMulGemm", ["A", "B", "C"], ["Y"], domain="lmul", transB=1, alpha=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", 1, [37, 70])],
                              [helper.make_tensor_value_info("Y", 1, None)],
                              [numpy_helper.from_array(gemm_b, "B"), numpy_helper.from_array(b[0], "C")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("lmul", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    results["gemm"] = lmul_onnx.InferenceSession(model.SerializeToString()).run(None, {"A": a})[0]
    np.savez(sys.argv[1], **results)
    """
)


def test_every_simd_path_gives_the_portable_bits(tmp_path: Path, run_with_simd: Callable) -> None:
    portable = run_with_simd("none", tmp_path / "none.npz", RUNNER)
    for setting in ("avx2", None):
        fast = run_with_simd(setting, tmp_path / f"{setting}.npz", RUNNER)
        assert fast.keys() == portable.keys()
        for key, expected in portable.items():
            assert np.array_equal(fast[key].view(np.uint32), expected.view(np.uint32)), (setting, key)
