"""Portable models (lmul_onnx.portable): the lmul ops as model-local functions of
standard ONNX ops, run by onnxruntime without the library and by onnx.reference, against
the numpy reference; the library's kernels take precedence where it is registered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import lmul_onnx
from lmul_onnx import numerics, zoo
from lmul_onnx.energy import energy
from lmul_onnx.portable import (
    K_CHUNK,
    PORTABLE_OPSET,
    PortableError,
    add_portable_functions,
    with_explicit_attributes,
)
from lmul_onnx.runtime import run
from lmul_onnx.testing import (
    SPECIAL_BITS,
    assert_close_to_reference,
    assert_same_bits,
    portable_unsupported,
    random_bits,
    single_op_model,
    sum_tolerance,
)

# onnx.reference computes the NaN and float16-overflow cases with numpy, which warns.
# Portable models need onnx >= 1.21 and onnxruntime >= 1.30: skipped (with that reason) in
# the minimum-versions CI run, which checks the refusal instead (test_portable_support.py).
pytestmark = [
    pytest.mark.skipif(portable_unsupported() is not None, reason=str(portable_unsupported())),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def portable_model(op_type: str, dtypes: list[Any], **attributes: Any) -> onnx.ModelProto:
    model, report = add_portable_functions(single_op_model(op_type, dtypes, **attributes))
    assert report.functions == [op_type] and report.opset_after == PORTABLE_OPSET
    return model


def run_everywhere(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's output from onnxruntime without the library, then from onnx.reference."""
    feeds = {f"in{i}": x for i, x in enumerate(inputs)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(with_explicit_attributes(model))
    return [run(session, feeds)[0], np.asarray(reference.run(None, feeds)[0])]


def operands(rng: np.random.Generator, dtype: np.dtype, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random bit patterns over every exponent, the SPEC corner cases paired with each other."""
    a = random_bits(rng, n).view(np.float32)
    b = rng.permutation(random_bits(rng, n)).view(np.float32)
    specials = np.array(SPECIAL_BITS, dtype=np.uint32).view(np.float32)
    a = np.concatenate([a, np.repeat(specials, specials.size)])
    b = np.concatenate([b, np.tile(specials, specials.size)])
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [None, 1, 3, 4, 7])
def test_lmul_bit_exact(dtype: np.dtype, m: int | None, rng: np.random.Generator) -> None:
    attributes = {} if m is None else {"mantissa_bits": m}
    a, b = operands(rng, dtype, 600)
    expected = numerics.lmul(a, b, mantissa_bits=m)
    for result in run_everywhere(portable_model("LMul", [dtype] * 2, **attributes), [a, b]):
        assert_same_bits(result, expected)


def test_lmul_every_float32_width_and_broadcasting(rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 1, 5)).astype(np.float32) * 1e3
    b = rng.standard_normal((4, 1)).astype(np.float32)
    for m in (2, 5, 10, 22, 23):
        model = portable_model("LMul", [np.float32] * 2, mantissa_bits=m)
        for result in run_everywhere(model, [a, b]):
            assert_same_bits(result, numerics.lmul(a, b, mantissa_bits=m))


MATMUL_SHAPES = [
    ((2, 6, 8), (8, 7)),
    ((5,), (5, 3)),
    ((4, 5), (5,)),
    ((6,), (6,)),
    ((2, 1, 3, 4), (5, 4, 2)),
    # K over several Loop steps of K_CHUNK, the last one partial; and K = 0 (no step).
    ((3, 2 * K_CHUNK + 6), (2 * K_CHUNK + 6, 5)),
    ((2, 0), (0, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("a_shape", "b_shape"), MATMUL_SHAPES)
def test_matmul_within_spec_tolerance(
    dtype: np.dtype, a_shape: tuple[int, ...], b_shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    m = 4 if dtype == np.float32 else None
    attributes = {} if m is None else {"mantissa_bits": m}
    expected = numerics.lmul_matmul(a, b, mantissa_bits=m, accumulate=np.float64)
    tolerance = sum_tolerance(a, b, m, a_shape[-1])
    for result in run_everywhere(portable_model("LMulMatMul", [dtype] * 2, **attributes), [a, b]):
        assert result.dtype == dtype
        assert_close_to_reference(result, expected, tolerance)


def test_matmul_special_values(rng: np.random.Generator) -> None:
    """Zeros, infinities, NaN and overflowing products inside sums: the same NaN/inf
    positions as the reference, the finite sums within tolerance."""
    a = rng.standard_normal((5, 6)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    a[0, 0], a[1, 1], a[2, 2], b[3, 0], b[4, 1] = 0.0, np.inf, 3e38, np.nan, 1e-42
    expected = numerics.lmul_matmul(a, b, accumulate=np.float64)
    finite = np.isfinite(expected)
    for result in run_everywhere(portable_model("LMulMatMul", [np.float32] * 2), [a, b]):
        assert np.array_equal(np.isnan(result), np.isnan(expected))
        assert np.array_equal(np.isinf(result), np.isinf(expected))
        assert np.array_equal(np.sign(result[np.isinf(result)]), np.sign(expected[np.isinf(expected)]))
        tolerance = sum_tolerance(a, b, None, 6)[finite]
        assert_close_to_reference(result[finite], expected[finite], tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_c", [True, False])
@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_within_spec_tolerance(
    dtype: np.dtype, with_c: bool, trans_a: int, trans_b: int, rng: np.random.Generator
) -> None:
    a = rng.standard_normal((7, 5) if trans_a else (5, 7)).astype(dtype)
    b = rng.standard_normal((3, 7) if trans_b else (7, 3)).astype(dtype)
    c = rng.standard_normal((3,)).astype(dtype) if with_c else None
    attributes = {"alpha": 0.5, "beta": -2.0, "transA": trans_a, "transB": trans_b, "mantissa_bits": 5}
    inputs = [a, b] + ([c] if with_c else [])
    model = portable_model("LMulGemm", [dtype] * len(inputs), **attributes)
    expected = numerics.lmul_gemm(
        a, b, c, alpha=0.5, beta=-2.0, trans_a=bool(trans_a), trans_b=bool(trans_b), mantissa_bits=5,
        accumulate=np.float64,
    )  # fmt: skip
    a2, b2 = (a.T if trans_a else a), (b.T if trans_b else b)
    tolerance = 0.5 * sum_tolerance(a2, b2, 5, 7) + 2.0**-23 * np.abs(expected)
    for result in run_everywhere(model, inputs):
        assert_close_to_reference(result, expected, tolerance)


def test_gemm_without_c_gets_a_zero_c() -> None:
    model, report = add_portable_functions(single_op_model("LMulGemm", [np.float32] * 2, transB=1))
    assert report.gemm_c_added == 1
    (node,) = (n for n in model.graph.node if n.op_type == "LMulGemm")
    assert len(node.input) == 3 and node.input[2]


def test_library_kernel_takes_precedence(rng: np.random.Generator) -> None:
    """With the library registered, onnxruntime runs the kernel, not the function body:
    a body deliberately made wrong (it returns A) does not change the result."""
    model = portable_model("LMul", [np.float32] * 2)
    (function,) = model.functions
    del function.node[:]
    function.node.append(helper.make_node("Identity", ["A"], ["Y"]))
    a, b = rng.standard_normal((2, 64)).astype(np.float32)
    feeds = {"in0": a, "in1": b}
    with_library = lmul_onnx.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert_same_bits(with_library, numerics.lmul(a, b))
    without = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(without.run(None, feeds)[0], a)


def test_refuses_ops_without_a_portable_body() -> None:
    model = single_op_model("LMulConv", [np.float32] * 2)
    with pytest.raises(PortableError, match="LMulConv"):
        add_portable_functions(model)


def test_refuses_an_opset_the_version_converter_cannot_raise() -> None:
    """onnx's version converter has no adapter for opset 1's Split: the refusal says why."""
    graph = helper.make_graph(
        [
            helper.make_node("Split", ["x"], ["s"], axis=0),
            helper.make_node("LMul", ["s", "s"], ["y"], domain="lmul"),
        ],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    old = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 1), helper.make_opsetid("lmul", 1)], ir_version=3
    )
    with pytest.raises(PortableError, match=r"opset 26 \(BitCast\).*imports opset 1;.*Split"):
        add_portable_functions(old)


def test_convert_portable_keeps_the_library_path_identical(rng: np.random.Generator, tmp_path: Path) -> None:
    """Python convert(portable=True): the library run is unchanged, the plain run close."""
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
        [w],
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    plain = lmul_onnx.convert(source, tmp_path / "plain.onnx", mantissa_bits=3)
    portable = lmul_onnx.convert(source, tmp_path / "portable.onnx", mantissa_bits=3, portable=True)
    assert not plain.functions and {f.name for f in portable.functions} == {"LMul", "LMulMatMul"}
    feeds = {"x": rng.standard_normal((3, 8)).astype(np.float32)}
    library = lmul_onnx.InferenceSession(tmp_path / "plain.onnx").run(None, feeds)[0]
    assert np.array_equal(lmul_onnx.InferenceSession(tmp_path / "portable.onnx").run(None, feeds)[0], library)
    alone = ort.InferenceSession(tmp_path / "portable.onnx", providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(alone.run(None, feeds)[0], library, rtol=1e-5, atol=1e-6)


def test_cli_portable_and_its_refusal(tmp_path: Path) -> None:
    cli = [str(Path(sys.executable).with_name("lmul-onnx")), "convert"]
    source = tmp_path / "conv.onnx"
    graph = helper.make_graph(
        [helper.make_node("LMulConv", ["x", "w"], ["y"], domain="lmul")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "xw"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("lmul", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=9), source)
    refused = subprocess.run(
        [*cli, str(source), "--portable", "-q"], capture_output=True, text=True, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "LMulConv" in refused.stderr, refused.stderr
    assert not (tmp_path / "conv.lmul.onnx").exists()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("portable-minilm")
    source = zoo.path("paraphrase-minilm-l3")
    cli = [
        str(Path(sys.executable).with_name("lmul-onnx")),
        "convert",
        str(source),
        "-q",
        "--mantissa-bits",
        "4",
    ]
    result = subprocess.run(
        [*cli, "-o", str(folder / "portable.onnx"), "--portable"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "portable: portable bodies for LMul, LMulMatMul; opset 17 -> 26" in result.stdout
    lmul_onnx.convert(source, folder / "library.onnx", mantissa_bits=4)
    return folder / "portable.onnx", folder / "library.onnx"


def test_portable_minilm_matches_the_library(minilm: tuple[Path, Path], rng: np.random.Generator) -> None:
    portable, library = minilm
    feeds = {
        "input_ids": rng.integers(1000, 3000, (1, 8)).astype(np.int64),
        "attention_mask": np.ones((1, 8), np.int64),
    }
    expected = lmul_onnx.InferenceSession(library).run(None, feeds)
    alone = ort.InferenceSession(portable, providers=["CPUExecutionProvider"]).run(None, feeds)
    registered = lmul_onnx.InferenceSession(portable).run(None, feeds)
    for ours, theirs, kernel in zip(alone, expected, registered, strict=True):
        assert np.array_equal(kernel, theirs)  # the kernels ran, not the bodies
        # Per output, a bound of the SPEC's kind: float32 rounding over the model's depth.
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * float(np.abs(theirs).max()))


def test_portable_keeps_external_weights_external(rng: np.random.Generator, tmp_path: Path) -> None:
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        [w],
    )
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, source, save_as_external_data=True, location="model.data", size_threshold=0)
    target = tmp_path / "out" / "portable.onnx"
    lmul_onnx.convert(source, target, portable=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["portable.onnx", "portable.onnx.data"]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    alone = ort.InferenceSession(target, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = numerics.lmul_matmul(x, numpy_helper.to_array(w), accumulate=np.float64)
    assert_close_to_reference(alone, expected, sum_tolerance(x, numpy_helper.to_array(w), None, 64))


def test_portable_bodies_are_not_part_of_the_model(minilm: tuple[Path, Path]) -> None:
    """The lmul functions define ops: energy counts the same products as without them, and
    converting the portable model again leaves their standard Mul nodes alone."""
    portable, library = minilm
    dims = {"batch_size": 1, "sequence_length": 16}
    assert energy(portable, dims=dims)["total"] == energy(library, dims=dims)["total"]
    model = lmul_onnx.convert(portable)
    assert [f.name for f in model.functions] == [f.name for f in onnx.load(portable).functions]
    assert all(n.domain == "" for f in model.functions for n in f.node)


def test_refuses_to_lose_the_models_own_functions() -> None:
    """onnx's version converter drops model-local functions: refused, not silently lost."""
    body = [helper.make_node("Mul", ["X", "X"], ["Y"])]
    square = helper.make_function("my", "Square", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Square", ["x"], ["s"], domain="my"), helper.make_node("Mul", ["s", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("my", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8, functions=[square])
    with pytest.raises(PortableError, match=r"drop its functions \(my\.Square\)"):
        lmul_onnx.convert(model, portable=True)


def test_a_model_without_lmul_ops_is_left_alone() -> None:
    model = single_op_model("Relu", [np.float32], domain="")
    result, report = add_portable_functions(model)
    assert result == model and report.functions == [] and report.opset_after == report.opset_before


# SPEC section 4's worked values: (a bits, b bits, m, offset, result bits).
OFFSET_WORKED_VALUES = [
    (0x3FC00000, 0x3FC00000, 23, 0, 0x40000000),
    (0x3FC00000, 0x3FC00000, 23, 0x100000, 0x40100000),
    (0x3F8CCCCD, 0x3F8CCCCD, 4, 0x80000, 0x3FA80000),
    (0x40400000, 0xC0000000, 23, 0x7FFFFF, 0xC13FFFFF),
]


@pytest.mark.parametrize(("a", "b", "m", "offset", "expected"), OFFSET_WORKED_VALUES)
def test_offset_worked_values(a: int, b: int, m: int, offset: int, expected: int) -> None:
    model = portable_model("LMul", [np.float32] * 2, mantissa_bits=m, offset=offset)
    inputs = [np.array([a], np.uint32).view(np.float32), np.array([b], np.uint32).view(np.float32)]
    for result in run_everywhere(model, inputs):
        assert result.view(np.uint32)[0] == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_offset_every_op_against_reference_and_kernel(dtype: np.dtype, rng: np.random.Generator) -> None:
    """Random offsets: LMul bit-exact, LMulMatMul and LMulGemm within tolerance; with the
    library registered the kernel honours the same attribute."""
    m = {np.dtype(np.float32): 5, np.dtype(np.float16): 4}.get(dtype, 3)
    offset = int(rng.integers(0, 1 << 23))
    a, b = operands(rng, dtype, 200)
    model = portable_model("LMul", [dtype] * 2, mantissa_bits=m, offset=offset)
    expected = numerics.lmul(a, b, mantissa_bits=m, offset=offset)
    for result in run_everywhere(model, [a, b]):
        assert_same_bits(result, expected)
    feeds = {"in0": a, "in1": b}
    assert_same_bits(run(lmul_onnx.InferenceSession(model.SerializeToString()), feeds)[0], expected)

    x = rng.standard_normal((3, 9)).astype(dtype)
    w = rng.standard_normal((9, 4)).astype(dtype)
    model = portable_model("LMulMatMul", [dtype] * 2, mantissa_bits=m, offset=offset)
    expected = numerics.lmul_matmul(x, w, mantissa_bits=m, offset=offset, accumulate=np.float64)
    magnitudes = numerics.lmul_matmul(
        np.abs(x), np.abs(w), mantissa_bits=m, offset=offset, accumulate=np.float64
    )
    for result in run_everywhere(model, [x, w]):
        assert_close_to_reference(result, expected, 9 * 2.0**-23 * magnitudes)

    c = rng.standard_normal((4,)).astype(dtype)
    model = portable_model("LMulGemm", [dtype] * 3, mantissa_bits=m, offset=offset, beta=0.5)
    expected = numerics.lmul_gemm(x, w, c, beta=0.5, mantissa_bits=m, offset=offset, accumulate=np.float64)
    for result in run_everywhere(model, [x, w, c]):
        assert_close_to_reference(result, expected, 9 * 2.0**-23 * magnitudes + 2.0**-23 * np.abs(expected))


def test_gemm_without_c_inside_a_subgraph(rng: np.random.Generator) -> None:
    """The zero C goes into the branch that holds the node; both runtimes agree."""
    then = helper.make_graph(
        [helper.make_node("LMulGemm", ["a", "b"], ["t"], domain="lmul", transB=1, mantissa_bits=6)],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    otherwise = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=otherwise)],
        "g",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 5]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("lmul", 1)]
    model, report = add_portable_functions(helper.make_model(graph, opset_imports=opsets, ir_version=9))
    assert report.gemm_c_added == 1 and len(model.graph.node) == 1
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    feeds = {"cond": np.array(True), "a": a, "b": b}
    expected = numerics.lmul_gemm(a, b, trans_b=True, mantissa_bits=6, accumulate=np.float64)
    alone = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with_library = lmul_onnx.InferenceSession(model.SerializeToString())
    for result in (alone.run(None, feeds)[0], with_library.run(None, feeds)[0]):
        assert_close_to_reference(result, expected, sum_tolerance(a, b.T, 6, 5))
