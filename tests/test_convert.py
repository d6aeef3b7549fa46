"""``lmul_onnx.convert``: what is rewritten, what is kept, and where it is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import numerics
from lmul_onnx.reference import reference_evaluator

OPSETS = [helper.make_opsetid("", 17)]


def make(
    nodes: list,
    inputs: list,
    outputs: list,
    initializers: list | None = None,
    functions: list | None = None,
    opsets: list | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=opsets or OPSETS, ir_version=9, functions=functions or [])
    model.producer_name = "lmul-onnx-tests"
    helper.set_model_props(model, {"author": "tests"})
    return model


def tensor(name: str, dtype: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.fixture
def mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """x @ W (initializer) -> Gemm with a Constant-node weight seen through Transpose ->
    y * y (two activations) -> integer MatMul on a side branch."""
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    v = helper.make_tensor(
        "V", TensorProto.FLOAT, [4, 6], rng.standard_normal(24).astype(np.float32).tolist()
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="proj/MatMul"),
        helper.make_node("Constant", [], ["v"], name="const_v", value=v),
        helper.make_node("Transpose", ["v"], ["vt"], name="vt", perm=[1, 0]),
        helper.make_node("Gemm", ["h", "vt"], ["g"], name="head/Gemm", alpha=0.5),
        helper.make_node("Mul", ["g", "g"], ["y"], name="square/Mul"),
        helper.make_node("MatMul", ["i", "j"], ["k"], name="int/MatMul"),
    ]
    return make(
        nodes,
        [
            tensor("x", shape=[3, 8]),
            tensor("i", TensorProto.INT32, [2, 2]),
            tensor("j", TensorProto.INT32, [2, 2]),
        ],
        [tensor("y", shape=[3, 4]), tensor("k", TensorProto.INT32, [2, 2])],
        [w],
    )


def by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def test_converts_float_products_and_keeps_everything_else(mlp: onnx.ModelProto) -> None:
    original = mlp.SerializeToString()
    result = lmul_onnx.convert(mlp)
    assert mlp.SerializeToString() == original, "the input ModelProto must not change"
    nodes = by_name(result)
    assert (nodes["proj/MatMul"].domain, nodes["proj/MatMul"].op_type) == ("lmul", "LMulMatMul")
    assert (nodes["head/Gemm"].domain, nodes["head/Gemm"].op_type) == ("lmul", "LMulGemm")
    assert (nodes["square/Mul"].domain, nodes["square/Mul"].op_type) == ("lmul", "LMul")
    assert (nodes["int/MatMul"].domain, nodes["int/MatMul"].op_type) == ("", "MatMul")
    assert [a.name for a in nodes["head/Gemm"].attribute] == ["alpha"]
    assert not any(a.name == "mantissa_bits" for n in result.graph.node for a in n.attribute)
    # names, inputs, outputs, initializers, metadata, IR and opsets stay as exported
    assert [n.name for n in result.graph.node] == [n.name for n in mlp.graph.node]
    assert [list(n.input) for n in result.graph.node] == [list(n.input) for n in mlp.graph.node]
    assert result.graph.input == mlp.graph.input and result.graph.output == mlp.graph.output
    assert [i.name for i in result.graph.initializer] == ["W"]
    assert (
        numpy_helper.to_array(result.graph.initializer[0]).tobytes()
        == numpy_helper.to_array(mlp.graph.initializer[0]).tobytes()
    )
    assert result.ir_version == 9 and result.producer_name == "lmul-onnx-tests"
    assert {p.key: p.value for p in result.metadata_props} == {"author": "tests"}
    assert {(o.domain, o.version) for o in result.opset_import} == {("", 17), ("lmul", 1)}
    onnx.checker.check_model(result, full_check=True)


def test_converted_model_runs_like_the_reference(mlp: onnx.ModelProto, rng: np.random.Generator) -> None:
    result = lmul_onnx.convert(mlp, mantissa_bits=4)
    feeds = {
        "x": rng.standard_normal((3, 8)).astype(np.float32),
        "i": np.arange(4, dtype=np.int32).reshape(2, 2),
        "j": np.ones((2, 2), np.int32),
    }
    native = lmul_onnx.InferenceSession(result.SerializeToString()).run(None, feeds)
    reference = reference_evaluator(result).run(None, feeds)
    assert np.allclose(native[0], reference[0], rtol=1e-5, atol=1e-5)
    assert np.array_equal(native[1], feeds["i"] @ feeds["j"])
    assert not np.allclose(native[0], onnx.reference.ReferenceEvaluator(mlp).run(None, feeds)[0], rtol=1e-3)


def test_scope_weights_and_attention(mlp: onnx.ModelProto) -> None:
    weights = by_name(lmul_onnx.convert(mlp, scope="weights"))
    # the Gemm's weight is a Constant node behind a Transpose: still a weight
    assert [n for n, v in weights.items() if v.domain == "lmul"] == ["proj/MatMul", "head/Gemm"]
    attention = by_name(lmul_onnx.convert(mlp, scope="attention"))
    assert [n for n, v in attention.items() if v.domain == "lmul"] == ["square/Mul"]


def test_ops_include_exclude_and_per_node_bits(mlp: onnx.ModelProto) -> None:
    only_matmul = by_name(lmul_onnx.convert(mlp, op_types_to_quantize=["MatMul"]))
    assert [n for n, v in only_matmul.items() if v.domain == "lmul"] == ["proj/MatMul"]
    included = by_name(
        lmul_onnx.convert(mlp, nodes_to_include=["^head/", "square"], nodes_to_exclude=["Mul$"])
    )
    assert [n for n, v in included.items() if v.domain == "lmul"] == ["head/Gemm"]
    bits = by_name(lmul_onnx.convert(mlp, mantissa_bits=7, mantissa_bits_for={"Gemm": 3, "G": 5}))
    values = {
        n: helper.get_node_attr_value(v, "mantissa_bits") for n, v in bits.items() if v.domain == "lmul"
    }
    assert values == {"proj/MatMul": 7, "head/Gemm": 3, "square/Mul": 7}


def test_bad_options_are_value_errors(mlp: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="unsupported op"):
        lmul_onnx.convert(mlp, op_types_to_quantize=["Softmax"])
    with pytest.raises(ValueError):
        lmul_onnx.convert(mlp, scope="everything")
    with pytest.raises(ValueError, match="regular expression"):
        lmul_onnx.convert(mlp, nodes_to_include=["("])
    with pytest.raises(ValueError, match=r"1\.\.23"):
        lmul_onnx.convert(mlp, mantissa_bits=24)


def test_mantissa_bits_beyond_the_type_width_is_refused() -> None:
    model = make(
        [helper.make_node("Mul", ["a", "b"], ["c"], name="half")],
        [tensor("a", TensorProto.FLOAT16, [2]), tensor("b", TensorProto.FLOAT16, [2])],
        [tensor("c", TensorProto.FLOAT16, [2])],
    )
    assert by_name(lmul_onnx.convert(model, mantissa_bits=10))["half"].domain == "lmul"
    with pytest.raises(ValueError, match="float16"):
        lmul_onnx.convert(model, mantissa_bits=11)


def test_idempotent(mlp: onnx.ModelProto) -> None:
    once = lmul_onnx.convert(mlp, mantissa_bits=4)
    twice = lmul_onnx.convert(once, mantissa_bits=2)
    assert twice.SerializeToString() == once.SerializeToString()


def test_subgraphs_and_functions_are_walked(rng: np.random.Generator) -> None:
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "x"], ["t"], name="then/MatMul")],
        "then",
        [],
        [tensor("t", shape=[2, 2])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["e"], name="else/Mul")], "else", [], [tensor("e", shape=[2, 2])]
    )
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body/id"),
            helper.make_node("Mul", ["acc_in", "x"], ["acc_out"], name="body/Mul"),
        ],
        "body",
        [
            tensor("iter", TensorProto.INT64, []),
            tensor("cond_in", TensorProto.BOOL, []),
            tensor("acc_in", shape=[2, 2]),
        ],
        [tensor("cond_out", TensorProto.BOOL, []), tensor("acc_out", shape=[2, 2])],
    )
    function = helper.make_function(
        "custom.fn",
        "Square",
        ["a"],
        ["b"],
        [helper.make_node("Mul", ["a", "a"], ["b"], name="fn/Mul")],
        opset_imports=OPSETS,
    )
    function.value_info.extend([tensor("a", shape=None), tensor("b", shape=None)])
    nodes = [
        helper.make_node(
            "If", ["flag"], ["branch"], name="if", then_branch=then_branch, else_branch=else_branch
        ),
        helper.make_node("Loop", ["trips", "", "branch"], ["looped"], name="loop", body=loop_body),
        helper.make_node("Square", ["looped"], ["y"], name="call", domain="custom.fn"),
    ]
    model = make(
        nodes,
        [
            tensor("flag", TensorProto.BOOL, []),
            tensor("trips", TensorProto.INT64, []),
            tensor("x", shape=[2, 2]),
        ],
        [tensor("y", shape=[2, 2])],
        functions=[function],
        opsets=[*OPSETS, helper.make_opsetid("custom.fn", 1)],
    )
    result = lmul_onnx.convert(model, mantissa_bits=3)
    graph = result.graph
    if_node = graph.node[0]
    branches = {a.name: a.g.node[0] for a in if_node.attribute}
    assert branches["then_branch"].op_type == "LMulMatMul" and branches["else_branch"].op_type == "LMul"
    assert graph.node[1].attribute[0].g.node[1].op_type == "LMul"
    fn = result.functions[0]
    assert fn.node[0].op_type == "LMul" and fn.node[0].domain == "lmul"
    assert ("lmul", 1) in {(o.domain, o.version) for o in fn.opset_import}
    onnx.checker.check_model(result)
    x = rng.standard_normal((2, 2)).astype(np.float32)
    feeds = {"flag": np.array(True), "trips": np.array(2, dtype=np.int64), "x": x}
    native = lmul_onnx.InferenceSession(result.SerializeToString()).run(None, feeds)[0]
    t = numerics.lmul_matmul(x, x, mantissa_bits=3)
    for _ in range(2):
        t = numerics.lmul(t, x, mantissa_bits=3)
    expected = numerics.lmul(t, t, mantissa_bits=3)
    assert np.allclose(native, expected, rtol=1e-5, atol=1e-6)


def _matmul_against(weight: np.ndarray) -> onnx.ModelProto:
    """x (2 x K) @ the constant ``weight`` (K x N)."""
    return make(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [tensor("x", shape=[2, weight.shape[0]])],
        [tensor("y", shape=[2, weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")],
    )


def test_external_data_gets_its_own_file(tmp_path: Path, rng: np.random.Generator) -> None:
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    model = _matmul_against(weight)
    source = tmp_path / "big.onnx"
    onnx.save(model, source, save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    lmul_onnx.convert(source, tmp_path / "big.lmul.onnx", mantissa_bits=5)
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.name in before
    }
    assert after == before, "the input and its external data must not change"
    assert (tmp_path / "big.lmul.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.lmul.onnx",
        "big.lmul.onnx.data",
        "big.onnx",
        "big.onnx.data",
    ]
    loaded = onnx.load(tmp_path / "big.lmul.onnx", load_external_data=False)
    locations = {e.value for e in loaded.graph.initializer[0].external_data if e.key == "location"}
    assert locations == {"big.lmul.onnx.data"}
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y = lmul_onnx.InferenceSession(tmp_path / "big.lmul.onnx").run(None, {"x": x})[0]
    expected = numerics.lmul_matmul(x, weight, mantissa_bits=5, accumulate=np.float64)
    assert np.allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_external_data_on_request(tmp_path: Path, rng: np.random.Generator) -> None:
    """An embedded model's weights go to <output>.data with external_data=True; the
    converted model computes the same bits as the embedded conversion."""
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    model = _matmul_against(weight)
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    lmul_onnx.convert(source, tmp_path / "embedded.onnx", mantissa_bits=4)
    lmul_onnx.convert(source, tmp_path / "external.onnx", mantissa_bits=4, external_data=True)
    assert not (tmp_path / "embedded.onnx.data").exists()
    stored = onnx.load(tmp_path / "external.onnx", load_external_data=False).graph.initializer[0]
    assert stored.data_location == TensorProto.EXTERNAL
    assert {e.value for e in stored.external_data if e.key == "location"} == {"external.onnx.data"}
    x = rng.standard_normal((2, 64)).astype(np.float32)
    outputs = [
        lmul_onnx.InferenceSession(tmp_path / name).run(None, {"x": x})[0]
        for name in ("embedded.onnx", "external.onnx")
    ]
    assert np.array_equal(outputs[0].view(np.uint32), outputs[1].view(np.uint32))
    # in memory too (a ModelProto, not a path)
    lmul_onnx.convert(model, tmp_path / "from_proto.onnx", external_data=True)
    assert (tmp_path / "from_proto.onnx.data").is_file()


def test_released_weight_pages_keep_their_content(tmp_path: Path, rng: np.random.Generator) -> None:
    """After packing, the kernels let the pages of onnxruntime's memory-mapped copy of a
    weight be reclaimed; a standard op reading the same weight, and the portable fall-back
    (products that may overflow read B again on every call), still see every bit."""
    weight = rng.standard_normal((256, 64)).astype(np.float32) * np.float32(1e19)  # 64 KiB
    model = make(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
            helper.make_node("Identity", ["W"], ["w_out"], name="copy"),
        ],
        [tensor("x", shape=[3, 256])],
        [tensor("y", shape=[3, 64]), tensor("w_out", shape=[256, 64])],
        [numpy_helper.from_array(weight, "W")],
    )
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    lmul_onnx.convert(source, tmp_path / "m.lmul.onnx", mantissa_bits=4, external_data=True)
    lmul_onnx.convert(source, tmp_path / "embedded.onnx", mantissa_bits=4)  # nothing released
    session = lmul_onnx.InferenceSession(tmp_path / "m.lmul.onnx")
    embedded = lmul_onnx.InferenceSession(tmp_path / "embedded.onnx")
    for scale in (1.0, 1e19):  # one-add kernels; then products that overflow (portable loop)
        x = rng.standard_normal((3, 256)).astype(np.float32) * np.float32(scale)
        y, w_out = session.run(None, {"x": x})
        assert np.array_equal(w_out.view(np.uint32), weight.view(np.uint32))
        assert np.array_equal(y.view(np.uint32), embedded.run(None, {"x": x})[0].view(np.uint32))
        assert np.isinf(y).any() == (scale > 1)


def test_refuses_to_overwrite_input(tmp_path: Path, mlp: onnx.ModelProto) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(mlp, path)
    with pytest.raises(ValueError, match="is the input model"):
        lmul_onnx.convert(path, path)
