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
CLAMPED, CLAMPED_MASKED_B, CLAMPED_HIGH, CLAMPED_HIGH_MASKED_B, CLAMPED_LOW, CLAMPED_LOW_MASKED_B = range(
    6, 12
)


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
    # no B range to derive the one-add stand-ins from: the clamped kernel's B masks
    assert variant(choose, a, np.zeros_like(b)) == CLAMPED_LOW_MASKED_B
    # data that must not take a fast kernel
    for special in (np.inf, -np.inf, np.nan):
        bad = a.copy()
        bad[3, 3] = special
        assert variant(choose, bad, b) == GENERAL
        assert variant(choose, b, bad) == GENERAL
    # products may overflow or underflow: the clamped kernels, with the checks the data needs
    assert variant(choose, a * 1e20, b * 1e20) == CLAMPED_HIGH
    assert variant(choose, a * 1e-20, b * 1e-20) == CLAMPED_LOW
    assert variant(choose, np.maximum(a, 0) * 1e20, b * 1e20) == CLAMPED_HIGH
    assert variant(choose, a * 1e20, np.maximum(b, 0) * 1e20) == CLAMPED_HIGH_MASKED_B
    assert variant(choose, a * 1e-20, np.maximum(b, 0) * 1e-20) == CLAMPED_LOW_MASKED_B
    wide = (a * np.exp(rng.uniform(-80, 80, a.shape))).astype(np.float32)
    wide_b = (b * np.exp(rng.uniform(-80, 80, b.shape))).astype(np.float32)
    assert variant(choose, wide, wide_b) == CLAMPED
    assert variant(choose, np.maximum(wide, 0), np.maximum(wide_b, 0)) == CLAMPED_MASKED_B
    assert variant(choose, a, b, m=0) == -1


def outer_cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """K = 1 products (every output is one product) at the limits of SPEC 1 step 3: for
    each row a, columns b with |a| + |b| - 0x3F800000 + offset just below, at and above
    2^23 (underflow) and 0x7F800000 (overflow), for the paper's offset at m = 23; with
    zeros, negative zeros and subnormals in both operands."""
    magnitudes = np.exp(rng.uniform(-87, 88, 23)).astype(np.float32)
    a = (magnitudes * rng.choice([-1, 1], 23)).astype(np.float32)
    a[[3, 11]] = [0.0, -0.0]
    a[17] = 1e-41
    bias = 0x3F800000 - (1 << 19)
    columns = []
    for bits in np.abs(a).view(np.uint32):
        if bits < 0x00800000:
            continue
        for target in (0x007FFFFF, 0x00800000, 0x00800001, 0x7F7FFFFF, 0x7F800000):
            wanted = target + bias - int(bits)
            if 0x00800000 <= wanted < 0x7F800000:
                columns.append(wanted | (int(rng.integers(0, 2)) << 31))
    b = np.array(columns, np.uint32).view(np.float32)
    b_zeros = b.copy()
    b_zeros[::7] = -0.0
    b_zeros[1::7] = 1e-42
    return {"limits": (a[:, None], b[None, :]), "limits_zeros_b": (a[:, None], b_zeros[None, :])}


def test_products_at_the_limits_are_the_reference_bits(
    choose: Callable[..., int], rng: np.random.Generator, run_op: Callable[..., np.ndarray]
) -> None:
    """With K = 1 each output is +0 + one product, so it must be the element-wise
    reference's bits exactly (a -0 product sums to +0), for every m = 1..23."""
    from lmul_onnx import numerics

    for name, (a, b) in outer_cases(rng).items():
        if has_simd(choose):
            assert variant(choose, a, b) in (CLAMPED, CLAMPED_MASKED_B), name
        for m in range(1, 24):
            expected = numerics.lmul(a, b, mantissa_bits=m) + np.float32(0)
            got = run_op("LMulMatMul", [a, b], mantissa_bits=m)
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), (name, m)


RUNNER = textwrap.dedent(
    """
    import sys
    import ml_dtypes
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    import lmul_onnx
    import lmul_onnx.runtime

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
        # the clamped kernels: zeros with products that may overflow, underflow or both
        "overflow_zeros": (np.maximum(a, 0) * np.float32(1e20), np.where(np.abs(b) < 0.3, -0.0, b * 1e20)),
        "underflow_zeros": (np.where(a > 1, 1e-41, a * 1e-20), np.where(np.abs(b) < 0.3, 0.0, b * 1e-20)),
        "range_zeros": (np.maximum(a, 0) * np.exp(rng.uniform(-80, 80, a.shape)),
                        np.where(np.abs(b) < 0.2, 0.0, b * np.exp(rng.uniform(-80, 80, b.shape)))),
        # zeros of B in a few rows of each panel (quantised weights: only those rows test
        # B's lanes), A zero in whole columns of a tile (skipped steps) and in single rows
        "sparse_zeros": (np.where((np.arange(a.shape[1]) % 7 == 0) | (rng.random(a.shape) < 0.01), 0.0, a),
                         np.where((np.arange(b.shape[0])[:, None] % 9 == 0) & (rng.random(b.shape) < 0.05),
                                  -0.0, b)),
        "sparse_zeros_b": (a, np.where((np.arange(b.shape[0])[:, None] % 9 == 0)
                                       & (rng.random(b.shape) < 0.05), 0.0, b)),
        # narrow B (at most 32 columns: narrow panels), batched heads, products that overflow
        "narrow_overflow": (rng.standard_normal((3, 37, 70)) * np.float32(1e20),
                            np.where(rng.random((3, 70, 29)) < 0.2, 0.0,
                                     rng.standard_normal((3, 70, 29)) * 1e20)),
    }
    cases["sparse_zeros_m3"] = (cases["sparse_zeros"][0][:3], cases["sparse_zeros"][1])
    cases = {name: (x.astype(np.float32), y.astype(np.float32)) for name, (x, y) in cases.items()}
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
    # the small-M clamped pass: products that underflow (a peaked softmax's probabilities,
    # down to subnormals and zeros) or span the whole range, with zeros in A and B
    logits = a[:2] * np.float32(15)
    peaked = np.exp(logits - logits.max(axis=1, keepdims=True))
    cases["m2_peaked_softmax"] = (peaked / peaked.sum(axis=1, keepdims=True), b)
    cases["m3_range_zeros"] = (cases["range_zeros"][0][:3], cases["range_zeros"][1])
    cases["m1_underflow_zeros"] = (cases["underflow_zeros"][0][:1], cases["underflow_zeros"][1])
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
                              ("LMulMatMul", {"mantissa_bits": 4, "offset": 471942}),
                              # the widest 16-bit panels and the narrowest 32-bit ones
                              ("LMulMatMul", {"mantissa_bits": 7}), ("LMulMatMul", {"mantissa_bits": 8})):
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
    # float16 / bfloat16 weights (16-bit panels at m <= 7, bfloat16 at any width), with
    # zeros and subnormals of B, M = 1 and more, B transposed by Gemm.
    zeros_b = np.where(np.abs(b) < 0.3, 0, b).astype(np.float32)
    zeros_b[::7, ::5] = 1e-41
    for dtype, onnx_type, widths in ((np.float16, TensorProto.FLOAT16, (None, 4, 7, 8)),
                                     (ml_dtypes.bfloat16, TensorProto.BFLOAT16, (None, 4))):
        for rows in (1, 37):
            for gemm in (False, True):
                x = a[:rows].astype(dtype)
                y = (zeros_b.T.copy() if gemm else zeros_b).astype(dtype)
                init = helper.make_tensor("B", onnx_type, y.shape, y.view(np.uint16).tobytes(), raw=True)
                for bits in widths:
                    attrs = {} if bits is None else {"mantissa_bits": bits}
                    if gemm:
                        attrs["transB"] = 1
                    node = helper.make_node("LMulGemm" if gemm else "LMulMatMul", ["A", "B"], ["Y"],
                                            domain="lmul", **attrs)
                    graph = helper.make_graph([node], "g",
                                              [helper.make_tensor_value_info("A", onnx_type, x.shape)],
                                              [helper.make_tensor_value_info("Y", onnx_type, None)], [init])
                    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
                    session = lmul_onnx.InferenceSession(model.SerializeToString())
                    out = lmul_onnx.runtime.run(session, {"A": x})[0]
                    results[f"{dtype.__name__}_{rows}_{gemm}_{bits}"] = out.view(np.uint16)
    # float16 / bfloat16 per-call B (widened to float32 for the small-M pass and for
    # packing; outputs narrowed back): M = 1 to 37, batched heads, zeros and subnormals,
    # float16's whole range (sums that overflow float16, and that land in its subnormals),
    # products that underflow (the clamped paths)
    halves = {
        "normal": (a[:1], b), "m3": (a[:3], zeros_b), "m37": (a, zeros_b),
        "heads": (rng.standard_normal((4, 2, 70)), rng.standard_normal((4, 70, 37))),
        "attention": (rng.standard_normal((4, 30, 70)), rng.standard_normal((4, 70, 45))),
        "big_sums": (a[:2] * 300, b * 300), "small_sums": (a[:2] * 1e-3, b * 1e-3),
        "tiny_m1": (a[:1] * 1e-4, b * 1e-4), "tiny_m9": (a[:9] * 1e-4, b * 1e-4),
        # several column blocks (each widened on its own: at most 2^18 values)
        "blocks": (rng.standard_normal((2, 600)), rng.standard_normal((600, 700))),
    }
    for dtype, onnx_type in ((np.float16, TensorProto.FLOAT16), (ml_dtypes.bfloat16, TensorProto.BFLOAT16)):
        for name, (x, y) in halves.items():
            x, y = x.astype(dtype), y.astype(dtype)
            inputs = [helper.make_tensor_value_info("A", onnx_type, x.shape),
                      helper.make_tensor_value_info("B", onnx_type, y.shape)]
            for attrs in ({}, {"mantissa_bits": 4}):
                node = helper.make_node("LMulMatMul", ["A", "B"], ["Y"], domain="lmul", **attrs)
                output = helper.make_tensor_value_info("Y", onnx_type, None)
                graph = helper.make_graph([node], "g", inputs, [output])
                model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
                session = lmul_onnx.InferenceSession(model.SerializeToString())
                out = lmul_onnx.runtime.run(session, {"A": x, "B": y})[0]
                results[f"per_call_{dtype.__name__}_{name}_{attrs}"] = out.view(np.uint16)
    np.savez(sys.argv[1], **results)
    """
)


def test_every_simd_path_gives_the_portable_bits(tmp_path: Path, run_with_simd: Callable) -> None:
    portable = run_with_simd("none", tmp_path / "none.npz", RUNNER)
    for setting in ("avx2", None):
        fast = run_with_simd(setting, tmp_path / f"{setting}.npz", RUNNER)
        assert fast.keys() == portable.keys()
        for key, expected in portable.items():
            assert fast[key].dtype == expected.dtype, key
            assert np.array_equal(fast[key].view(np.uint8), expected.view(np.uint8)), (setting, key)
