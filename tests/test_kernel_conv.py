"""``lmul.LMulConv`` and ``lmul.LMulConvTranspose`` against the numpy reference.

SPEC section 3: every product an L-Mul, sums in any order at float32 or better, so the
kernels are compared with float64 sums of the exact products within K * 2^-23 * sum|products|
(``lmul_onnx.conv`` with ``accumulate=np.float64``), over seeded random configurations of
every attribute. Each output is summed the same way whatever the thread count, the SIMD
width or whether the weights were packed when the session was created.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import lmul_onnx
import lmul_onnx.runtime
from lmul_onnx.conv import (
    conv_geometry,
    conv_operation_counts,
    conv_transpose_geometry,
    lmul_conv,
    lmul_conv_transpose,
)
from lmul_onnx.testing import IR_VERSION, ONNX_OPSET, onnx_type, rounding_bound

REFERENCE = {"LMulConv": lmul_conv, "LMulConvTranspose": lmul_conv_transpose}


def conv_model(
    op: str, dtype: np.dtype, w: np.ndarray, *, constant_w: bool, bias: bool, **attributes: Any
) -> onnx.ModelProto:
    """One ``op`` node: X and (unless constant) W and the optional bias are graph inputs."""
    names = ["X", "W"] + (["B"] if bias else [])
    node = helper.make_node(op, names, ["Y"], name="conv_node", domain="lmul", **attributes)
    graph_inputs = [n for n in names if not (constant_w and n == "W")]
    inputs = [helper.make_tensor_value_info(n, onnx_type(dtype), None) for n in graph_inputs]
    # raw bytes: onnx 1.18's numpy_helper does not know ml_dtypes' bfloat16
    weights = helper.make_tensor("W", onnx_type(dtype), w.shape, w.tobytes(), raw=True)
    initializers = [weights] if constant_w else []
    graph = helper.make_graph(
        [node], "conv", inputs, [helper.make_tensor_value_info("Y", onnx_type(dtype), None)], initializers
    )
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("lmul", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def run_conv(
    op: str,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    constant_w: bool = False,
    threads: int = 1,
    **attributes: Any,
) -> np.ndarray:
    model = conv_model(op, x.dtype, w, constant_w=constant_w, bias=b is not None, **attributes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = lmul_onnx.InferenceSession(model.SerializeToString(), options)
    feeds = {"X": x} | ({} if constant_w else {"W": w}) | ({} if b is None else {"B": b})
    return lmul_onnx.runtime.run(session, feeds)[0]


def assert_matches_reference(op: str, got: np.ndarray, x, w, b, m: int | None, attrs: dict) -> None:
    """Within SPEC 3's tolerance of the float64 sum of exact products (plus the bias)."""
    reference = REFERENCE[op]
    expected = reference(x, w, b, mantissa_bits=m, accumulate=np.float64, **attrs)
    # |L-Mul(a, b)| = L-Mul(|a|, |b|): the sum of |products| is the conv of the magnitudes.
    magnitudes = reference(np.abs(x), np.abs(w), None, mantissa_bits=m, accumulate=np.float64, **attrs)
    depth = w.shape[0 if op == "LMulConvTranspose" else 1] * int(np.prod(w.shape[2:]))
    bias_term = 0.0 if b is None else np.abs(b.astype(np.float64)).reshape((1, -1) + (1,) * (x.ndim - 2))
    # float32 sum and bias (the +2: the sum's and the bias addition's roundings), then SPEC 2's
    # one rounding to the tensor type: half an ulp, 2^-25 absolute in float16's subnormal range.
    summed = (depth + 2) * 2.0**-23 * (magnitudes + bias_term)
    bound = summed + rounding_bound(got.dtype, expected, summed) + 1e-30
    assert got.shape == expected.shape and got.dtype == x.dtype
    got64 = got.astype(np.float64)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isnan(got64), np.isnan(expected))
    assert np.array_equal(got64[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    error = np.abs(got64[finite] - expected[finite])
    assert np.all(error <= bound[finite]), f"max error/bound {np.max(error / bound[finite]):.3g}"


def random_config(
    rng: np.random.Generator, index: int
) -> tuple[str, np.ndarray, np.ndarray, Any, int | None, dict]:
    """One random Conv or ConvTranspose configuration that satisfies the shape rules."""
    while True:
        op = "LMulConvTranspose" if index % 2 else "LMulConv"
        rank = int(rng.integers(1, 4))
        big = index % 10 == 0  # several panels, chunks and row blocks
        depthwise = rng.random() < 0.2
        group = int(rng.integers(2, 9)) if depthwise else int(rng.choice([1, 1, 2, 3]))
        cg = 1 if depthwise else int(rng.integers(1, 5))
        mg = (
            int(rng.integers(1, 3))
            if depthwise
            else int(rng.integers(50, 110) if big else rng.integers(1, 6))
        )
        limit = {1: 40 if big else 12, 2: 20 if big else 8, 3: 6 if big else 5}[rank]
        spatial = [int(rng.integers(1, limit + 1)) for _ in range(rank)]
        kernel = [int(rng.integers(1, 4)) for _ in range(rank)]
        attrs: dict[str, Any] = {}
        if group > 1 or rng.random() < 0.3:
            attrs["group"] = group
        if rng.random() < 0.5:
            attrs["strides"] = [int(rng.integers(1, 4)) for _ in range(rank)]
        if rng.random() < 0.4:
            attrs["dilations"] = [int(rng.integers(1, 3)) for _ in range(rank)]
        if rng.random() < 0.2:
            attrs["kernel_shape"] = kernel
        choice = rng.choice(["pads", "pads", "none", "SAME_UPPER", "SAME_LOWER", "VALID", "output_shape"])
        if choice == "pads":
            attrs["pads"] = [int(rng.integers(0, 3)) for _ in range(2 * rank)]
        elif choice in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            attrs["auto_pad"] = str(choice)
        strides = attrs.get("strides", [1] * rank)
        if op == "LMulConvTranspose":
            if rng.random() < 0.3:
                attrs["output_padding"] = [int(rng.integers(0, s)) for s in strides]
            if choice == "output_shape":
                attrs["output_shape"] = [
                    int(n * s + rng.integers(-2, 1)) for n, s in zip(spatial, strides, strict=True)
                ]
        if rng.random() < 0.2:  # SPEC 4's offset instead of the paper's constant
            attrs["offset"] = int(rng.integers(0, 1 << 23))
        dtype = np.dtype(rng.choice([np.float32, np.float32, np.float16, ml_dtypes.bfloat16]))
        type_bits = {np.dtype(np.float32): 23, np.dtype(np.float16): 10}.get(dtype, 7)
        m = None if rng.random() < 0.5 else int(rng.integers(1, type_bits + 1))
        x = rng.standard_normal((int(rng.integers(1, 3)), cg * group, *spatial))
        w_shape = (cg * group, mg, *kernel) if op == "LMulConvTranspose" else (mg * group, cg, *kernel)
        w = rng.standard_normal(w_shape)
        kind = rng.choice(["normal", "relu", "sparse", "tiny", "special"], p=[0.5, 0.2, 0.1, 0.1, 0.1])
        if kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "sparse":
            w = np.where(np.abs(w) < 0.5, 0.0, w)
        elif kind == "tiny":  # products may underflow: the checked loops
            x = x * 1e-36
        elif kind == "special":
            x.flat[int(rng.integers(0, x.size))] = rng.choice([np.inf, -np.inf, np.nan])
        b = rng.standard_normal(w_shape[1] * group if op == "LMulConvTranspose" else w_shape[0])
        b = b.astype(dtype) if rng.random() < 0.6 else None
        x, w = x.astype(dtype), w.astype(dtype)
        geometry = conv_transpose_geometry if op == "LMulConvTranspose" else conv_geometry
        try:
            geometry(spatial, kernel, **{k: v for k, v in attrs.items() if k not in ("group", "offset")})
        except ValueError:
            continue
        return op, x, w, b, m, attrs


CONFIGS = 220


def test_random_configurations_match_the_reference() -> None:
    rng = np.random.default_rng(1414)
    seen: set[tuple] = set()
    for index in range(CONFIGS):
        op, x, w, b, m, attrs = random_config(rng, index)
        bits = {} if m is None else {"mantissa_bits": m}
        got = run_conv(op, x, w, b, **bits, **attrs)
        assert_matches_reference(op, got, x, w, b, m, attrs)
        if index % 4 == 0:  # weights packed at session creation, several threads: same bits
            again = run_conv(op, x, w, b, constant_w=True, threads=3, **bits, **attrs)
            assert np.array_equal(got.view(np.uint8), again.view(np.uint8)), (op, attrs)
        seen.add((op, x.ndim - 2, "group" in attrs and attrs["group"] == x.shape[1], x.dtype.name))
    # the sample covers every op, rank and type, and depthwise convolutions
    assert {(op, rank) for op, rank, _, _ in seen} == {(o, r) for o in REFERENCE for r in (1, 2, 3)}
    assert {dtype for *_, dtype in seen} == {"float32", "float16", "bfloat16"}
    assert any(depthwise for _, _, depthwise, _ in seen)


# float16 outputs in the subnormal range (|y| < 2^-14), where the one rounding of SPEC 2 may
# err by up to 2^-25 absolute, far more than 2^-11 relative: (seed, index) of random_config,
# found by sweeping seeds (the kernel's bits equal the numpy reference's there).
SUBNORMAL_FLOAT16 = [(6, 23), (7, 0), (11, 520), (12, 240)]


@pytest.mark.parametrize(("seed", "index"), SUBNORMAL_FLOAT16)
def test_float16_subnormal_results_round_once(seed: int, index: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(index + 1):
        op, x, w, b, m, attrs = random_config(rng, i)
    bits = {} if m is None else {"mantissa_bits": m}
    got = run_conv(op, x, w, b, **bits, **attrs)
    assert x.dtype == np.float16
    assert_matches_reference(op, got, x, w, b, m, attrs)
    # the case needs the absolute term: rounding the exact sum once to float16 already errs
    # by more than 2^-11 relative at some subnormal output
    expected = REFERENCE[op](x, w, b, mantissa_bits=m, accumulate=np.float64, **attrs)
    rounding_error = np.abs(expected.astype(np.float16).astype(np.float64) - expected)
    subnormal = np.abs(expected) < 2.0**-14
    assert np.any(rounding_error[subnormal] > 2.0**-11 * np.abs(expected[subnormal]))


def test_bias_and_padding_follow_onnxruntime_shapes(rng: np.random.Generator) -> None:
    """Positive operands: L-Mul is within 12.5 % of each product, so the sums stay within
    12.5 % of onnxruntime's own Conv / ConvTranspose (any misplaced window would not),
    yet they are not the exact products."""
    x = rng.uniform(0.5, 2, (1, 4, 7, 5)).astype(np.float32)
    cases = [
        ("Conv", rng.uniform(0.5, 2, (6, 2, 3, 2)), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}),
        (
            "Conv",
            rng.uniform(0.5, 2, (4, 1, 3, 3)),
            {"group": 4, "auto_pad": "SAME_LOWER", "strides": [2, 2]},
        ),
        ("ConvTranspose", rng.uniform(0.5, 2, (4, 3, 3, 3)), {"strides": [2, 3], "output_shape": [14, 15]}),
        (
            "ConvTranspose",
            rng.uniform(0.5, 2, (4, 1, 2, 3)),
            {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
        ),
    ]
    for op, w, attrs in cases:
        w = w.astype(np.float32)
        b = rng.uniform(0, 1, w.shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else w.shape[0])
        b = b.astype(np.float32)
        node = helper.make_node(op, ["X", "W", "B"], ["Y"], **attrs)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in "XWB"],
            [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=IR_VERSION
        )
        standard = ort.InferenceSession(model.SerializeToString()).run(None, {"X": x, "W": w, "B": b})[0]
        got = run_conv(f"LMul{op}", x, w, b, **attrs)
        assert got.shape == standard.shape
        assert np.all(np.abs(got - standard) <= 0.125 * standard), (op, attrs)
        assert not np.allclose(got, standard, rtol=1e-4), "L-Mul products are not exact products"


VARIANT_RUNNER = textwrap.dedent(
    """
    import sys
    import ml_dtypes
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_kernel_conv import run_conv

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 13, 11)).astype(np.float32)
    w = rng.standard_normal((70, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    wt = rng.standard_normal((8, 5, 4, 3)).astype(np.float32)
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    bt = b[:5]
    big = rng.standard_normal((1, 8, 40, 37)).astype(np.float32)
    sparse = np.where(np.abs(w) < 0.4, 0, w).astype(np.float32)
    relu = np.maximum(x, 0)
    ranged = (x * np.exp(rng.uniform(-80, 80, x.shape))).astype(np.float32)
    sparse_t = np.where(np.abs(wt) < 0.4, 0, wt).astype(np.float32)
    pads_5x5 = [2, 1, 1, 2]
    x3 = rng.standard_normal((1, 4, 5, 6, 7)).astype(np.float32)
    w3 = rng.standard_normal((6, 4, 3, 3, 3)).astype(np.float32)
    dw5 = rng.standard_normal((8, 1, 5, 5)).astype(np.float32)
    dw5[0, 0, 2, 2] = 0  # a zero weight: its tap is left out
    wide = np.maximum(rng.standard_normal((1, 16, 9, 70)), 0).astype(np.float32)  # > 64 columns per row
    w16 = rng.standard_normal((12, 16, 3, 3)).astype(np.float32)
    w16[np.abs(w16) < 0.3] = 0  # zero weights: masked A
    cases = {
        "dense_pads": ("LMulConv", x, w, b, {"group": 2, "pads": [1, 1, 1, 1]}),
        "interior": ("LMulConv", big, w, b, {"group": 2, "pads": [1, 2, 1, 0]}),  # boxes around the interior
        "valid": ("LMulConv", x, w, None, {"group": 2, "strides": [2, 1]}),
        "relu": ("LMulConv", np.maximum(x, 0), w, b, {"group": 2, "dilations": [2, 1], "pads": [0, 2, 1, 0]}),
        "sparse_w": ("LMulConv", x, sparse, b, {"group": 2}),
        "sparse_relu": ("LMulConv", np.maximum(x, 0), sparse, b, {"group": 2, "pads": [1, 1, 1, 1]}),
        "depthwise": ("LMulConv", x, dw, None, {"group": 8, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        "tiny": ("LMulConv", x * np.float32(1e-36), w, b, {"group": 2}),  # products underflow
        # the clamped kernels on im2col panels: underflow with zeros in X, in the padding and
        # in W; the whole exponent range (under- and overflow); ConvTranspose's panels
        "tiny_relu_pads": ("LMulConv", relu * np.float32(1e-36), sparse, b,
                           {"group": 2, "pads": [1, 2, 0, 1], "strides": [1, 2]}),
        "range_pads": ("LMulConv", ranged, w * np.float32(1e10), b, {"group": 2, "pads": [1, 1, 1, 1]}),
        "transpose_range": ("LMulConvTranspose", np.where(relu > 0, ranged, 0).astype(np.float32), sparse_t,
                            bt, {"strides": [2, 1], "pads": [1, 0, 0, 1]}),
        "m3": ("LMulConv", x, w, b, {"group": 2, "mantissa_bits": 3, "auto_pad": "SAME_UPPER"}),
        # 16-bit tensors: X widened and rounded in vectorised pieces, the sums narrowed back
        "float16": ("LMulConv", x.astype(np.float16), w.astype(np.float16), b.astype(np.float16),
                    {"group": 2, "pads": [1, 1, 1, 1]}),
        "float16_m4": ("LMulConv", (x * 100).astype(np.float16), w.astype(np.float16), None,
                       {"group": 2, "mantissa_bits": 4}),
        "bfloat16": ("LMulConvTranspose", x.astype(ml_dtypes.bfloat16), wt.astype(ml_dtypes.bfloat16), None,
                     {"strides": [2, 2]}),
        "offset": ("LMulConv", x, w, b, {"group": 2, "pads": [1, 1, 1, 1], "offset": 0}),
        "transpose_offset": ("LMulConvTranspose", x, wt, None, {"strides": [2, 2], "offset": 0x7FFFFF}),
        "conv1d": ("LMulConv", x[:, :, 0], w[:, :, 0], b, {"group": 2, "pads": [2, 1]}),
        "conv3d": ("LMulConv", x[:, :, None, :5], w[:, :, None], None, {"group": 2, "pads": [0, 1, 1] * 2}),
        "special": ("LMulConv", np.where(x > 2.5, np.inf, x).astype(np.float32), w, b, {"group": 2}),
        "transpose": ("LMulConvTranspose", x, wt, None, {"strides": [2, 2], "pads": [1, 0, 1, 1]}),
        "transpose_relu": ("LMulConvTranspose", np.maximum(x, 0), wt, None, {"strides": [3, 1], "group": 2}),
        "transpose_1d": ("LMulConvTranspose", x[:, :, 0], wt[:, :, 0], bt, {"strides": [4], "pads": [2, 1]}),
        # in-place interiors (stride 1): several 3-D planes written in place / through a buffer
        "conv3d_planes": ("LMulConv", x3, w3, b[:6], {"pads": [1] * 6}),
        "conv3d_planes_valid": ("LMulConv", np.maximum(x3, 0), w3, None, {"dilations": [1, 2, 1]}),
        # pads beyond the kernel's reach: outputs outside the input's extent, im2col only
        "pad_beyond_reach": ("LMulConv", relu, w[:, :, :1, :1], b, {"group": 2, "pads": [2, 1, 0, 2]}),
        # pointwise on ReLU output with zero weights (both zero masks), rows wider than 64
        "pointwise_zeros": ("LMulConv", wide, w16[:, :, :1, :1].copy(), b[:12], {}),
        "wide_pads_zeros": ("LMulConv", wide, w16, None, {"pads": [1, 1, 1, 1]}),
        "stride2_relu": ("LMulConv", relu, sparse, b, {"group": 2, "strides": [2, 2], "pads": [1, 0, 1, 2]}),
        "transpose_zeros": ("LMulConvTranspose", relu, sparse_t, bt, {"strides": [1, 2]}),
        # depthwise: 5x5 stride 2 (phase split), stride 3, a zero weight, 3-D with depth padding
        "depthwise_5x5_s2": ("LMulConv", relu, dw5, b[:8], {"group": 8, "strides": [2, 2], "pads": pads_5x5}),
        "depthwise_s3": ("LMulConv", x, dw5, None, {"group": 8, "strides": [3, 3], "pads": [0, 1, 2, 0]}),
        "depthwise_3d": ("LMulConv", np.maximum(x3, 0), w3[:4, :1], None, {"group": 4, "pads": [1, 0] * 3}),
    }
    results = {}
    for name, (op, xs, ws, bs, attrs) in cases.items():
        for constant in (False, True):
            results[f"{name}_{constant}"] = run_conv(op, xs, ws, bs, constant_w=constant, threads=2, **attrs)
    np.savez(sys.argv[1], **results)
    """
)


def test_every_simd_path_gives_the_portable_bits(tmp_path: Path, run_with_simd: Callable) -> None:
    here = str(Path(__file__).parent)
    portable = run_with_simd("none", tmp_path / "none.npz", VARIANT_RUNNER, here)
    for key in [k for k in portable if k.endswith("_False")]:  # constant weights: same bits
        assert np.array_equal(portable[key].view(np.uint8), portable[key[:-5] + "True"].view(np.uint8)), key
    for setting in ("avx2", None):
        fast = run_with_simd(setting, tmp_path / f"{setting}.npz", VARIANT_RUNNER, here)
        assert fast.keys() == portable.keys()
        for key, expected in portable.items():
            assert np.array_equal(fast[key].view(np.uint8), expected.view(np.uint8)), (setting, key)


def test_inputs_are_left_alone(rng: np.random.Generator) -> None:
    """float32 X at 23 bits is read in place: the kernels must not write to it."""
    x = np.maximum(rng.standard_normal((1, 6, 9, 8)), 0).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    wd = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    for op, weights, attrs in [
        ("LMulConv", w, {"group": 6, "pads": [1, 1, 1, 1]}),
        ("LMulConv", wd, {"pads": [1, 0, 2, 1]}),
        ("LMulConvTranspose", wd.transpose(1, 0, 2, 3).copy(), {"strides": [2, 2]}),
    ]:
        before = x.copy()
        run_conv(op, x, weights, None, **attrs)
        assert np.array_equal(x.view(np.uint32), before.view(np.uint32)), (op, attrs)


F32 = ["float32"] * 2
F32B = ["float32"] * 3
X2, W2 = [1, 2, 5, 5], [3, 2, 3, 3]
XT, WT = [1, 2, 4, 4], [2, 3, 3, 3]
ERROR_CASES = {
    # name: (op, dtypes, attributes, input shapes, failing stage, message fragment)
    "rank_2": ("LMulConv", F32, {}, [[2, 5], [3, 5]], "run", "rank 3 to 5"),
    "rank_6": ("LMulConv", F32, {}, [[1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]], "run", "rank 3 to 5"),
    "w_rank": ("LMulConv", F32, {}, [X2, [3, 2, 3]], "run", "rank 3 to 5"),
    "channels": ("LMulConv", F32, {}, [[1, 3, 5, 5], W2], "run", "does not match"),
    "group_split": ("LMulConv", F32, {"group": 2}, [[1, 4, 5, 5], W2], "run", "does not match"),
    "bias_shape": ("LMulConv", F32B, {}, [X2, W2, [2]], "run", "B must have shape (3)"),
    "kernel_shape": ("LMulConv", F32, {"kernel_shape": [2, 2]}, [X2, W2], "run", "kernel_shape"),
    "kernel_too_big": ("LMulConv", F32, {}, [[1, 2, 2, 2], W2], "run", "smaller than the dilated kernel"),
    "zero_spatial": ("LMulConv", F32, {"pads": [2, 2, 2, 2]}, [[1, 2, 0, 5], W2], "run", "must be positive"),
    "strides_length": ("LMulConv", F32, {"strides": [1]}, [X2, W2], "run", "must have 2 values"),
    "pads_odd": ("LMulConv", F32, {"pads": [1, 1, 1]}, [X2, W2], "create", "even number"),
    "pads_negative": ("LMulConv", F32, {"pads": [-1, 0, 0, 0]}, [X2, W2], "create", ">= 0"),
    "stride_zero": ("LMulConv", F32, {"strides": [0, 1]}, [X2, W2], "create", ">= 1"),
    "dilation_zero": ("LMulConv", F32, {"dilations": [1, 0]}, [X2, W2], "create", ">= 1"),
    "dilation_huge": ("LMulConv", F32, {"dilations": [1, 1 << 62]}, [X2, W2], "create", "< 2^31"),
    "group_huge": ("LMulConvTranspose", F32, {"group": 1 << 40}, [XT, WT], "create", "< 2^31"),
    "group_zero": ("LMulConv", F32, {"group": 0}, [X2, W2], "create", "'group' must be >= 1"),
    "auto_pad_value": ("LMulConv", F32, {"auto_pad": "SAME"}, [X2, W2], "create", "SAME_UPPER, SAME_LOWER"),
    "auto_pad_int": ("LMulConv", F32, {"auto_pad": 1}, [X2, W2], "create", "must be a string"),
    "strides_int": ("LMulConv", F32, {"strides": 2}, [X2, W2], "create", "must be a list of ints"),
    "group_list": ("LMulConv", F32, {"group": [1]}, [X2, W2], "create", "'group'"),
    "conv_output_padding": ("LMulConv", F32, {"output_padding": [0, 0]}, [X2, W2], "create", "unknown attr"),
    "lengths_differ": ("LMulConv", F32, {"strides": [1, 1], "dilations": [1]}, [X2, W2], "create", "other"),
    "four_spatial": ("LMulConv", F32, {"kernel_shape": [1, 1, 1, 1]}, [X2, W2], "create", "1 to 3 spatial"),
    "bits": ("LMulConv", F32, {"mantissa_bits": 24}, [X2, W2], "create", "1..23"),
    "bits_float16": ("LMulConv", ["float16"] * 2, {"mantissa_bits": 11}, [X2, W2], "create", "1..10"),
    "bits_float": ("LMulConvTranspose", F32, {"mantissa_bits": 3.0}, [XT, WT], "create", "must be an int"),
    "mixed_types": ("LMulConv", ["float32", "float16"], {}, [X2, W2], "create", "LMulConv"),
    "t_channels": ("LMulConvTranspose", F32, {}, [[1, 3, 4, 4], WT], "run", "does not match"),
    "t_group": ("LMulConvTranspose", F32, {"group": 3}, [XT, WT], "run", "does not match"),
    "t_bias": ("LMulConvTranspose", F32B, {}, [XT, WT, [2]], "run", "B must have shape (3)"),
    "t_output_padding": (
        "LMulConvTranspose", F32, {"output_padding": [1, 1]}, [XT, WT], "run", "inconsistent with input size"
    ),
    "t_output_shape_big": (
        "LMulConvTranspose", F32, {"output_shape": [20, 6]}, [XT, WT], "run", "inconsistent with input size"
    ),
    "t_output_shape_length": ("LMulConvTranspose", F32, {"output_shape": [6]}, [XT, WT], "run", "2 values"),
    "t_output_shape_zero": ("LMulConvTranspose", F32, {"output_shape": [0, 6]}, [XT, WT], "create", ">= 1"),
    "t_pads_exceed": ("LMulConvTranspose", F32, {"pads": [3, 3, 3, 3]}, [XT, WT], "run", "pads exceed"),
    "t_output_padding_negative": (
        "LMulConvTranspose", F32, {"output_padding": [-1, 0]}, [XT, WT], "create", ">= 0"
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def error_outcomes(run_bad_cases: Callable) -> dict[str, dict[str, str]]:
    """All bad cases in one process (a crash fails every case, as it should)."""
    return run_bad_cases({name: case[:4] for name, case in ERROR_CASES.items()})


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_bad_input_is_an_error_naming_the_node(name: str, error_outcomes: dict[str, dict[str, str]]) -> None:
    *_, stage, fragment = ERROR_CASES[name]
    outcome = error_outcomes[name]
    assert outcome["stage"] == stage, outcome
    assert fragment in outcome["error"], outcome["error"]
    if name != "mixed_types":
        assert "bad_node" in outcome["error"], "the error must name the node"


def test_operation_counts() -> None:
    # 3x3 Conv, 64 -> 64 channels, 56x56 outputs: 64*9 products per output, bias included
    products, additions = conv_operation_counts(
        (1, 64, 56, 56), (64, 64, 3, 3), (1, 64, 56, 56), bias=True, transpose=False
    )
    assert products == 56 * 56 * 64 * 576 and additions == 56 * 56 * 64 * 576
    # depthwise: 9 products, 8 additions per output without bias
    assert conv_operation_counts((1, 8, 5, 5), (8, 1, 3, 3), (1, 8, 3, 3), bias=False, transpose=False) == (
        648,
        576,
    )
    # ConvTranspose: each of the 2*4*4 inputs meets 3 * 2*2 weights
    assert conv_operation_counts((1, 2, 4, 4), (2, 3, 2, 2), (1, 3, 8, 8), bias=True, transpose=True) == (
        384,
        576,
    )
