"""The one graph layer (``lmul_onnx.graph``) and every verb on models whose products sit
in subgraphs, model-local functions and unnamed nodes (issue 10), each checked against an
independent numpy evaluation and hand counts."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import graph
from lmul_onnx.baselines import operand_rounded_model
from lmul_onnx.energy import DEFAULT_TABLE_PJ, energy
from lmul_onnx.passes.selection import SelectionOptions
from lmul_onnx.validate import converted_nodes

F = TensorProto.FLOAT
RNG_SEED = 1234


def _weights(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.5 * rng.standard_normal(shape)).astype(np.float32) for shape in shapes]


def _e4m3(a: np.ndarray) -> np.ndarray:
    return a.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def _same(a: np.ndarray) -> np.ndarray:
    return a


# --------------------------------------------------------------------- models


def if_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The voice-activity shape: every product (4 Gemm, 6 Mul) inside the two branches of
    one If on mean(x) > 0; weights in the main graph, read from the branches."""
    w = {}
    for branch, seed in (("t", 1), ("e", 2)):
        w1, b1, w2, b2, s = _weights(seed, (4, 8), (8,), (8, 3), (3,), (3,))
        w.update(
            {f"{branch}W1": w1, f"{branch}b1": b1, f"{branch}W2": w2, f"{branch}b2": b2, f"{branch}s": s}
        )

    def branch(p: str, label: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Gemm", ["x", f"{p}W1", f"{p}b1"], [f"{p}h"], name="Gemm_1"),
            helper.make_node("Mul", [f"{p}h", f"{p}h"], [f"{p}h2"], name="Mul_1"),
            helper.make_node("Gemm", [f"{p}h2", f"{p}W2", f"{p}b2"], [f"{p}g"]),  # unnamed
            helper.make_node("Mul", [f"{p}g", f"{p}s"], [f"{p}g2"], name="Mul_2"),
            helper.make_node("Mul", [f"{p}g2", f"{p}g2"], [f"{p}y"], name="Mul_3"),
        ]
        return helper.make_graph(nodes, label, [], [helper.make_tensor_value_info(f"{p}y", F, None)])

    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"], name="positive"),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="If_0",
            then_branch=branch("t", "then"),
            else_branch=branch("e", "else"),
        ),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in w.items()]
    initializers.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    g = helper.make_graph(
        nodes,
        "vad",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 3])],
        initializers,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), w


def if_numpy(w: dict[str, np.ndarray], x: np.ndarray, r: dict[str, object]) -> np.ndarray:
    """The If model in numpy; ``r[name]`` rounds the operands of the node ``name``."""
    p = "t" if x.mean() > 0 else "e"
    prefix = "If_0/then_branch/" if p == "t" else "If_0/else_branch/"

    def rd(name: str) -> object:
        return r.get(prefix + name, _same)

    h = rd("Gemm_1")(x) @ rd("Gemm_1")(w[f"{p}W1"]) + w[f"{p}b1"]
    h2 = rd("Mul_1")(h) * rd("Mul_1")(h)
    g = rd("Gemm#2")(h2) @ rd("Gemm#2")(w[f"{p}W2"]) + w[f"{p}b2"]
    g2 = rd("Mul_2")(g) * rd("Mul_2")(w[f"{p}s"])
    return rd("Mul_3")(g2) * rd("Mul_3")(g2)


def loop_model(constant_trips: bool = True) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A Loop of 3 iterations whose body holds an If: then acc * A, else acc @ B."""
    a, b = _weights(3, (1, 4), (4, 4))
    then = helper.make_graph(
        [helper.make_node("Mul", ["acc", "A"], ["t"], name="Scale")],
        "then",
        [],
        [helper.make_tensor_value_info("t", F, None)],
    )
    other = helper.make_graph(
        [helper.make_node("MatMul", ["acc", "B"], ["e"], name="Mix")],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, None)],
    )
    body = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["acc"], ["total"], name="sum", keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
            helper.make_node(
                "If", ["positive"], ["next"], name="Branch", then_branch=then, else_branch=other
            ),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", F, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("next", F, [1, 4]),
        ],
    )
    initializers = [
        numpy_helper.from_array(a, "A"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(True), "go"),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [1, 4])]
    if constant_trips:
        initializers.append(numpy_helper.from_array(np.array(3, np.int64), "trips"))
    else:
        inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
    g = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="Loop_0", body=body)],
        "loop",
        inputs,
        [helper.make_tensor_value_info("y", F, [1, 4])],
        initializers,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), {"A": a, "B": b}


def loop_numpy(w: dict[str, np.ndarray], x: np.ndarray, r: dict[str, object]) -> np.ndarray:
    scale = r.get("Loop_0/body/Branch/then_branch/Scale", _same)
    mix = r.get("Loop_0/body/Branch/else_branch/Mix", _same)
    acc = x
    for _ in range(3):
        acc = scale(acc) * scale(w["A"]) if acc.sum() > 0 else mix(acc) @ mix(w["B"])
    return acc


def function_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """local.Affine (MatMul then Mul) called twice with float; local.Scale (Mul) called
    twice with float and once with int64."""
    (w,) = _weights(4, (4, 4))
    affine = helper.make_function(
        "local",
        "Affine",
        ["x", "w"],
        ["y"],
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="MatMul"),
            helper.make_node("Mul", ["h", "x"], ["y"], name="Mul"),
        ],
        [helper.make_opsetid("", 19)],
    )
    scale = helper.make_function(
        "local",
        "Scale",
        ["x", "s"],
        ["y"],
        [helper.make_node("Mul", ["x", "s"], ["y"], name="Mul")],
        [helper.make_opsetid("", 19)],
    )
    nodes = [
        helper.make_node("Affine", ["x", "W"], ["a1"], name="call_a1", domain="local"),
        helper.make_node("Affine", ["a1", "W"], ["a2"], name="call_a2", domain="local"),
        helper.make_node("Scale", ["a2", "a2"], ["s1"], name="call_s1", domain="local"),
        helper.make_node("Scale", ["s1", "a2"], ["yf"], name="call_s2", domain="local"),
        helper.make_node("Scale", ["k", "k"], ["yi"], name="call_s3", domain="local"),
    ]
    g = helper.make_graph(
        nodes,
        "functions",
        [
            helper.make_tensor_value_info("x", F, [2, 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [3]),
        ],
        [
            helper.make_tensor_value_info("yf", F, [2, 4]),
            helper.make_tensor_value_info("yi", TensorProto.INT64, [3]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("local", 1)],
        ir_version=9,
        functions=[affine, scale],
    )
    return model, {"W": w}


def function_numpy(w: dict[str, np.ndarray], x: np.ndarray, r: dict[str, object]) -> np.ndarray:
    mm, mul = r.get("local.Affine/MatMul", _same), r.get("local.Affine/Mul", _same)

    def affine(v: np.ndarray) -> np.ndarray:
        return mul(mm(v) @ mm(w["W"])) * mul(v)

    a2 = affine(affine(x))
    return (a2 * a2) * a2


def unnamed_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Three unnamed nodes: MatMul, Mul, Mul."""
    w, s = _weights(5, (4, 4), (4,))
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Mul", ["h", "h"], ["h2"]),
            helper.make_node("Mul", ["h2", "S"], ["y"]),
        ],
        "unnamed",
        [helper.make_tensor_value_info("x", F, [2, 4])],
        [helper.make_tensor_value_info("y", F, [2, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(s, "S")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), {"W": w, "S": s}


def unnamed_numpy(w: dict[str, np.ndarray], x: np.ndarray, r: dict[str, object]) -> np.ndarray:
    mm, m1, m2 = (r.get(n, _same) for n in ("MatMul#0", "Mul#1", "Mul#2"))
    h = mm(x) @ mm(w["W"])
    h2 = m1(h) * m1(h)
    return m2(h2) * m2(w["S"])


# ------------------------------------------------------------------ helpers


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _run(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = lmul_onnx.session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _inputs(shape: tuple[int, ...], seed: int = RNG_SEED) -> list[np.ndarray]:
    """Random inputs, and all-positive / all-negative ones so that both If branches run."""
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    return [x[0], x[1], np.abs(x[0]) + 0.1, -np.abs(x[1]) - 0.1]


# -------------------------------------------------------------------- walk


def test_walk_names_keys_and_locations() -> None:
    model, _ = graph.load(if_model()[0])
    entries = {e.name: e for e in graph.walk(model)}
    assert "If_0/then_branch/Gemm_1" in entries and "If_0/else_branch/Gemm#2" in entries
    inner = entries["If_0/then_branch/Mul_3"]
    assert inner.key == "2/then_branch/4" and inner.location == "graph/If_0/then_branch"
    assert [p.name for p in inner.parents] == ["If_0"] and not inner.in_main_graph
    fn, _ = graph.load(function_model()[0])
    names = [e.name for e in graph.walk(fn)]
    assert "local.Affine/MatMul" in names and "local.Scale/Mul" in names
    expanded = [e.name for e in graph.walk(fn, expand_calls=True) if e.function is not None]
    assert expanded.count("call_a1/local.Affine/MatMul") == 1 and len(expanded) == 2 * 2 + 3


def test_keys_do_not_depend_on_names() -> None:
    proto = unnamed_model()[0]
    keys = [e.key for e in graph.walk(graph.load(proto)[0])]
    for i, node in enumerate(proto.graph.node):
        node.name = f"renamed{i}"
    assert [e.key for e in graph.walk(graph.load(proto)[0])] == keys == ["0", "1", "2"]


def test_types_of_subgraphs_and_functions_per_call_site() -> None:
    model, _ = graph.load(loop_model()[0])
    types = graph.infer(model)
    mix = next(e for e in graph.walk(model) if e.name.endswith("Mix"))
    assert types.of(mix.node.outputs[0]) == graph.TensorType(ir.DataType.FLOAT, (1, 4))
    fn, _ = graph.load(function_model()[0])
    types = graph.infer(fn)
    mul = next(e for e in graph.walk(fn) if e.name == "local.Scale/Mul")
    assert types.dtypes(mul.node.outputs[0], mul.function) == {ir.DataType.FLOAT, ir.DataType.INT64}
    matmul = next(e for e in graph.walk(fn) if e.name == "local.Affine/MatMul")
    assert types.dtypes(matmul.node.outputs[0], matmul.function) == {ir.DataType.FLOAT}


def test_dtype_table() -> None:
    assert graph.dtype_from_ort("tensor(float16)") == np.float16
    assert graph.dtype_from_ort("tensor(bfloat16)") == ml_dtypes.bfloat16
    assert graph.dtype_from_ort("seq(tensor(float))") is None
    assert graph.mantissa_bits(ir.DataType.BFLOAT16) == 7 and graph.mantissa_bits(ir.DataType.INT64) is None


# ----------------------------------------------------------- verbs on models

MODELS = {  # builder, numpy evaluation, convert options, shape of x
    "if": (if_model, if_numpy, {}, (1, 4)),
    "loop": (loop_model, loop_numpy, {}, (1, 4)),
    "functions": (function_model, function_numpy, {}, (2, 4)),
    "unnamed": (unnamed_model, unnamed_numpy, {"nodes_to_exclude": [r"^Mul#2$"]}, (2, 4)),
}
CONVERTED = {
    "if": [
        f"If_0/{b}_branch/{n}"
        for b in ("else", "then")
        for n in ("Gemm_1", "Mul_1", "Gemm#2", "Mul_2", "Mul_3")
    ],
    "loop": ["Loop_0/body/Branch/else_branch/Mix", "Loop_0/body/Branch/then_branch/Scale"],
    "functions": ["local.Affine/MatMul", "local.Affine/Mul"],
    "unnamed": ["MatMul#0", "Mul#1"],
}


@pytest.mark.parametrize("name", MODELS)
def test_convert_finds_every_product(name: str, tmp_path: Path) -> None:
    build, _, options, _ = MODELS[name]
    source = _save(build()[0], tmp_path / "m.onnx")
    selection = SelectionOptions(exclude=tuple(options.get("nodes_to_exclude", ())))
    report = lmul_onnx.convert_file(source, tmp_path / "m.lmul.onnx", selection)
    assert [r.name for r in report.converted] == CONVERTED[name]
    converted, _ = graph.load(tmp_path / "m.lmul.onnx")
    assert [e.name for e in graph.walk(converted) if e.node.domain == "lmul"] == CONVERTED[name]
    if name == "functions":
        skipped = {r.name: r.decision.reason for r in report.nodes if not r.decision.convert}
        assert skipped == {
            "local.Scale/Mul": "function called with different element types (float32, int64): "
            "not specialised"
        }
    if name == "unnamed":
        assert {r.name: r.decision.reason for r in report.nodes if not r.decision.convert} == {
            "Mul#2": "matched by --exclude"
        }


@pytest.mark.parametrize("name", MODELS)
def test_fp8_baseline_rounds_exactly_the_converted_operands(name: str, tmp_path: Path) -> None:
    build, evaluate, options, shape = MODELS[name]
    proto, weights = build()
    source = _save(proto, tmp_path / "m.onnx")
    target = tmp_path / "m.lmul.onnx"
    lmul_onnx.convert(source, target, **options)
    original, _ = graph.load(source)
    entries = converted_nodes(original, graph.load(target)[0])
    assert [e.name for e in entries] == CONVERTED[name]
    rounded = operand_rounded_model(original, [e.key for e in entries], "fp8-e4m3")
    rounding = {n: _e4m3 for n in CONVERTED[name]}
    differs = False
    for x in _inputs(shape):
        feeds = {"x": x}
        if name == "functions":
            feeds["k"] = np.array([1, 2, 3], np.int64)
        got = _run(rounded, feeds)[0]
        plain = _run(proto, feeds)[0]
        np.testing.assert_allclose(got, evaluate(weights, x, rounding), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(plain, evaluate(weights, x, {}), rtol=2e-5, atol=1e-6)
        differs = differs or not np.array_equal(got, plain)
    assert differs  # it really rounded


@pytest.mark.parametrize("name", MODELS)
def test_validate_lists_nodes_and_baseline_moves(name: str, tmp_path: Path) -> None:
    build, _, options, _ = MODELS[name]
    source = _save(build()[0], tmp_path / "m.onnx")
    target = tmp_path / "m.lmul.onnx"
    lmul_onnx.convert(source, target, **options)
    report = lmul_onnx.validate(source, target, per_node=True, compare=["fp8-e4m3"], samples=3, atol=100)
    assert [n["name"] for n in report.nodes] == CONVERTED[name]
    for row in report.nodes:
        if "/" in row["name"]:
            assert row["output"] is None and "not a graph value" in row["reason"]
        else:
            assert row["cosine"] > 0.9
    for output, metrics in report.baselines["fp8-e4m3"].items():
        assert metrics["max_abs"] > 0 or output == "yi"  # yi: the int64 call, not rounded
    assert ("not measured" in report.format_table()) == (name != "unnamed")


def test_energy_equals_hand_counts() -> None:
    # If: per branch Gemm 1x4@4x8+b (32 mul, 24+8 add), Mul 1x8 (8), Gemm 1x8@8x3+b
    # (24 mul, 21+3 add), Mul 1x3 (3), Mul 1x3 (3); both branches counted.
    total = energy(if_model()[0])["total"]
    assert (total["multiplications"], total["additions"]) == (2 * 70, 2 * 56)
    assert total["unknown_nodes"] == 0
    # Loop of 3: Mul 1x4 (4) and MatMul 1x4@4x4 (16 mul, 12 add) per iteration.
    total = energy(loop_model()[0])["total"]
    assert (total["multiplications"], total["additions"], total["per_iteration_nodes"]) == (60, 36, 0)
    report = energy(loop_model(constant_trips=False)[0])
    assert (report["total"]["multiplications"], report["total"]["per_iteration_nodes"]) == (20, 2)
    assert all(n["per_iteration"] and n["executions"] is None for n in report["nodes"])
    # Functions per call site: Affine 2x4@4x4 (32 mul, 24 add) + Mul 2x4 (8), twice;
    # Scale 2x4 (8) twice with float; the int64 call is not a float product.
    report = energy(function_model()[0])
    assert (report["total"]["multiplications"], report["total"]["additions"]) == (2 * 40 + 2 * 8, 2 * 24)
    assert [n["name"] for n in report["nodes"]][:2] == [
        "call_a1/local.Affine/MatMul",
        "call_a1/local.Affine/Mul",
    ]
    # Unnamed: 2x4@4x4 (32 mul, 24 add), Mul 8, Mul 8.
    total = energy(unnamed_model()[0])["total"]
    assert (total["multiplications"], total["additions"]) == (48, 24)


def test_energy_of_converted_model_separates_the_two_savings(tmp_path: Path) -> None:
    source = _save(unnamed_model()[0], tmp_path / "m.onnx")
    report = lmul_onnx.convert_file(source, tmp_path / "m.lmul.onnx", SelectionOptions(exclude=(r"^Mul#2$",)))
    total = report.energy["total"]
    assert total["converted_multiplications"] == 40 and total["multiplications"] == 48
    # converted products: 40 L-Mul instead of 40 float products (plus their float sums)
    t = DEFAULT_TABLE_PJ
    converted = 1 - (40 * t["int32_add"] + 24 * t["fp32_add"]) / (40 * t["fp32_mul"] + 24 * t["fp32_add"])
    assert total["converted_saving_percent"] == pytest.approx(100 * converted)
    everything = 1 - (40 * t["int32_add"] + 8 * t["fp32_mul"] + 24 * t["fp32_add"]) / (
        48 * t["fp32_mul"] + 24 * t["fp32_add"]
    )
    assert total["saving_percent"] == pytest.approx(100 * everything)
    assert total["saving_percent"] < total["converted_saving_percent"]
    assert energy(tmp_path / "m.lmul.onnx")["total"] == total


def test_energy_counts_a_scan_body_per_scanned_element() -> None:
    body = helper.make_graph(
        [helper.make_node("Mul", ["s_in", "x_t"], ["s_out"], name="step")],
        "body",
        [helper.make_tensor_value_info("s_in", F, [4]), helper.make_tensor_value_info("x_t", F, [4])],
        [helper.make_tensor_value_info("s_out", F, [4])],
    )
    g = helper.make_graph(
        [helper.make_node("Scan", ["s0", "xs"], ["s"], name="Scan_0", body=body, num_scan_inputs=1)],
        "scan",
        [helper.make_tensor_value_info("s0", F, [4]), helper.make_tensor_value_info("xs", F, ["T", 4])],
        [helper.make_tensor_value_info("s", F, [4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    bound = energy(model, dims={"T": 5})
    assert [(n["name"], n["multiplications"], n["executions"]) for n in bound["nodes"]] == [
        ("Scan_0/body/step", 20, 5)
    ]
    unbound = energy(model)["total"]
    assert (unbound["multiplications"], unbound["per_iteration_nodes"]) == (4, 1)


def test_cli_lists_subgraph_nodes_and_two_savings(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lmul_onnx.cli.main import main

    source = _save(if_model()[0], tmp_path / "vad.onnx")
    converted = tmp_path / "vad.lmul.onnx"
    result = CliRunner().invoke(main, ["convert", str(source), "-o", str(converted), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "the 140 converted products use" in result.output and "all 140 of the model's" in result.output
    result = CliRunner().invoke(
        main,
        ["validate", str(source), str(converted), "--per-node", "--compare", "fp8-e4m3", "--atol", "100"],
    )
    assert result.exit_code == 0, result.output
    assert (
        "If_0/then_branch/Gemm_1" in result.output and "not measured: inside the body of If" in result.output
    )
    fp8 = next(line for line in result.output.splitlines() if line.startswith("y ") and "fp8-e4m3" in line)
    assert "inf" not in fp8.split()  # the baseline rounded: a finite SNR
