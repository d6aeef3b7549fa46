"""``lmul-onnx tune``: budgets, the fragile node, plans that convert re-applies, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import zoo
from lmul_onnx.cli.main import main
from lmul_onnx.plan import PlanError, load_plan
from lmul_onnx.tune import Budget, TuneError, tune


def exactly_zero(mul_name: str) -> list[onnx.NodeProto]:
    """d = y * three - (y + y + y): exactly 0 (both sides are 3y rounded once), but a few
    percent of 3y when the product ``mul_name`` is an L-Mul. Needs the initializer ``three``."""
    return [
        helper.make_node("Mul", ["y", "three"], ["t"], name=mul_name),
        helper.make_node("Add", ["y", "y"], ["u"], name="u"),
        helper.make_node("Add", ["u", "y"], ["v"], name="v"),
        helper.make_node("Sub", ["t", "v"], ["d"], name="d"),
    ]


def fragile_model(seed: int = 7) -> onnx.ModelProto:
    """y = (x @ W1) @ W2, out = y + 128 * (y * 3 - (y + y + y)).

    Exactly, the bracket is 0 (both sides are 3y rounded once); with L-Mul on the
    ``fragile`` product it is a few percent of 3y, amplified 128 times: that node alone
    breaks any sensible budget, while the two MatMuls are benign. The product by 128 is
    an exact power of two: the rule leaves it exact.
    """
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "W2"),
        numpy_helper.from_array(np.float32([3.0]), "three"),
        numpy_helper.from_array(np.float32([128.0]), "big"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2"),
        *exactly_zero("fragile"),
        helper.make_node("Mul", ["d", "big"], ["e"], name="amplify"),
        helper.make_node("Add", ["y", "e"], ["out"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture
def fragile_path(tmp_path: Path) -> Path:
    path = tmp_path / "fragile.onnx"
    onnx.save(fragile_model(), path)
    return path


PLAN = '{"format": "lmul-onnx-plan", "version": 1, "nodes": [%s]}'
MM1 = '"key": "0", "node": "mm1", "convert": true'


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def decisions(plan: dict | lmul_onnx.Plan) -> dict[str, tuple[bool, str]]:
    nodes = plan.nodes if isinstance(plan, lmul_onnx.Plan) else plan["nodes"]
    return {n["node"]: (n["convert"], n["reason"]) for n in nodes}


def test_fragile_node_stays_exact(fragile_path: Path) -> None:
    result = tune(fragile_path, budget=Budget(min_cosine=0.99), samples=2, dims={"batch": 4})
    assert result.passed
    converted = {k for k, (convert, _) in decisions(result.plan).items() if convert}
    assert converted == {"mm1", "mm2"}
    reasons = decisions(result.plan)
    assert reasons["fragile"][1].startswith("breaks the budget alone")
    assert reasons["amplify"] == (False, "exact power of two")
    assert result.measurement.summary()["cosine"] >= 0.99
    # the MatMuls carry all the convertible energy but the fragile product's 32 multiplications
    assert 0 < result.energy["saved_percent"] < result.energy["all_lmul_percent"]


def test_bisection_backs_off_when_two_good_nodes_are_too_much(fragile_path: Path) -> None:
    loose = tune(
        fragile_path, budget=Budget(min_cosine=0.0), samples=2, dims={"batch": 4}, op_types=["MatMul"]
    )
    singles = {n["node"]: n["drift"]["cosine"] for n in loose.plan.nodes if n["drift"]}
    assert set(singles) == {"mm1", "mm2"}
    both = loose.measurement.summary()["cosine"]
    assert both < min(singles.values())
    threshold = (both + min(singles.values())) / 2
    result = tune(
        fragile_path, budget=Budget(min_cosine=threshold), samples=2, dims={"batch": 4}, op_types=["MatMul"]
    )
    converted = [k for k, (convert, _) in decisions(result.plan).items() if convert]
    assert len(converted) == 1 and result.passed
    kept = next(k for k, (convert, _) in decisions(result.plan).items() if not convert)
    assert "breaks the budget with it" in decisions(result.plan)[kept][1]
    # the rejected node gets its second chance beside the final choice, and fails it again
    assert result.trace[-1]["step"] == "retry 1 (ranks 1-1)" and not result.trace[-1]["passed"]
    assert decisions(result.plan)[kept][1].count("(cosine") == 2
    assert result.measurement.summary()["cosine"] >= threshold


def test_metric_budget_and_mantissa_choice(fragile_path: Path, tmp_path: Path) -> None:
    metric = tmp_path / "my_metric.py"
    metric.write_text(
        "import numpy as np\n"
        "def worst(original, converted, inputs):\n"
        "    assert set(inputs[0]) == {'x'}\n"
        "    return max(float(np.abs(o['out'] - c['out']).max()) for o, c in zip(original, converted))\n"
    )
    result = tune(
        fragile_path,
        budget=Budget(metric=f"{metric}:worst", max_loss=0.5),
        samples=2,
        dims={"batch": 4},
        mantissa_bits=(2, 7),
    )
    nodes = {n["node"]: n for n in result.plan.nodes}
    assert not nodes["fragile"]["convert"]
    for name in ("mm1", "mm2"):
        if nodes[name]["convert"]:
            assert nodes[name]["mantissa_bits"] == 7  # the more accurate width of the two
    assert result.measurement.loss is not None and result.measurement.loss <= 0.5


def test_plan_round_trip_gives_the_same_bytes(fragile_path: Path, tmp_path: Path) -> None:
    tuned, plan, again = tmp_path / "tuned.onnx", tmp_path / "plan.json", tmp_path / "again.onnx"
    code, output = invoke(
        "tune", str(fragile_path), "-o", str(tuned), "--plan-out", str(plan), "--min-cosine", "0.99",
        "--dim", "batch=4", "--samples", "2", "--jobs", "2",
        "--mantissa-bits", "3,4", "--offsets", "paper,unbiased",
    )  # fmt: skip
    assert code == 0, output
    assert "PASSED" in output and "exact: breaks the budget alone" in output
    code, output = invoke("convert", str(fragile_path), "--plan", str(plan), "-o", str(again), "-q")
    assert code == 0, output
    assert tuned.read_bytes() == again.read_bytes()
    via_api = lmul_onnx.convert(fragile_path, plan=plan)
    assert [n.domain for n in via_api.graph.node if n.name in ("mm1", "mm2", "fragile")] == [
        "lmul",
        "lmul",
        "",
    ]
    saved = json.loads(plan.read_text())
    assert saved["budget"] == {"min_cosine": 0.99}
    assert decisions(saved)["mm1"][0] and saved["summary"]["energy"]["converted_nodes"] == 2
    written = {n.name: {a.name: a.i for a in n.attribute} for n in onnx.load(tuned).graph.node}
    for entry in saved["nodes"]:
        if entry["convert"]:
            assert entry["mantissa_bits"] in (3, 4) and entry["offset"] in (None, "unbiased")
            assert written[entry["node"]]["mantissa_bits"] == entry["mantissa_bits"]
            assert ("offset" in written[entry["node"]]) == (entry["offset"] == "unbiased")


def test_json_report(fragile_path: Path, tmp_path: Path) -> None:
    code, output = invoke(
        "tune", str(fragile_path), "-o", str(tmp_path / "o.onnx"), "--min-snr", "20", "--atol", "1",
        "--dim", "batch=4", "--json", "-", "--jobs", "1",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(output)
    assert report["passed"] and report["drift"]["snr_db"] >= 20 and report["outputs"]["out"]["max_abs"] <= 1
    assert report["energy"]["converted_nodes"] == 2 and report["evaluations"] >= 4


def test_budget_met_on_minilm(tmp_path: Path) -> None:
    """The README's model, fast settings: one 8-token sentence."""
    source = zoo.path("paraphrase-minilm-l3")
    out = tmp_path / "minilm.tuned.onnx"
    ranges = {"input_ids": (1000, 3000)}
    dims = {"batch_size": 1, "sequence_length": 8}
    result = tune(source, out, budget=Budget(min_cosine=0.99), dims=dims, input_ranges=ranges, threads=1)
    assert result.passed and result.energy["saved_percent"] >= 70
    report = lmul_onnx.validate(source, out, dims=dims, input_ranges=ranges, min_cosine=0.99, atol=1e9)
    assert report.passed
    assert report.outputs["output"]["cosine"] == pytest.approx(result.measurement.outputs["output"]["cosine"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no budget"),
        (("--metric", "math:fabs"), "--metric and --max-loss go together"),
        (("--metric", "no_such_module_xyz:f", "--max-loss", "1"), "cannot import no_such_module_xyz"),
        (("--metric", "math:no_function", "--max-loss", "1"), "has no function 'no_function'"),
        (("--metric", "nonsense", "--max-loss", "1"), "expected module:function"),
        (("--metric", "math:fabs", "--max-loss", "1"), "--metric math:fabs: raised TypeError"),
        (("--min-cosine", "1.5"), "--min-cosine must be in [-1, 1]"),
        (("--atol", "-1"), "--atol '-1': a tolerance must be a finite number >= 0"),
        (("--min-cosine", "0.9", "--mantissa-bits", "3,x"), "'x' is not an integer"),
        (("--min-cosine", "0.9", "--mantissa-bits", "30"), "30 is outside 1..23"),
        (("--min-cosine", "0.9", "--atol", "nope:1"), "unknown output(s) ['nope']"),
        (("--min-cosine", "0.9", "--ops", "Softmax"), "unsupported op type"),
    ],
)
def test_bad_budgets_and_metrics_exit_2_with_one_line(
    fragile_path: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, output = invoke("tune", str(fragile_path), "-o", str(tmp_path / "o.onnx"), "--jobs", "1", *args)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and message in output, output
    assert not (tmp_path / "o.onnx").exists()


def test_missing_model_exits_2(tmp_path: Path) -> None:
    code, output = invoke("tune", str(tmp_path / "none.onnx"), "--min-cosine", "0.9")
    assert code == 2 and "no such file" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON plan"),
        ('{"format": "other"}', "not an lmul-onnx plan"),
        ('{"format": "lmul-onnx-plan", "version": 9, "nodes": []}', "version 9 is not supported"),
        (
            '{"format": "lmul-onnx-plan", "version": 1, "nodes": [{"node": "mm1", "convert": true}]}',
            "no node key",
        ),
        (PLAN % '{"key": "0", "node": "mm1"}', "'convert' must be"),
        (
            PLAN % '{"key": "0", "node": "mm1", "convert": true, "mantissa_bits": 99}',
            "must be null or an integer",
        ),
        (
            PLAN % '{"key": "0", "node": "mm1", "convert": true, "offset": "huge"}',
            "offset 'huge': choose paper",
        ),
        (PLAN % '{"key": "99", "node": "nope", "convert": true}', "does not have, e.g. '99'"),
        (PLAN % '{"key": "0", "node": "other", "convert": true}', "a plan for another model?"),
        (
            PLAN
            % '{"key": "0", "node": "mm1", "convert": true}, {"key": "0", "node": "mm1", "convert": false}',
            "listed twice",
        ),
    ],
)
def test_bad_plans_exit_2_with_one_line(
    fragile_path: Path, tmp_path: Path, content: str, message: str
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    code, output = invoke(
        "convert", str(fragile_path), "--plan", str(plan), "-o", str(tmp_path / "o.onnx"), "-q"
    )
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and message in output, output
    assert not (tmp_path / "o.onnx").exists()


def test_plan_excludes_selection_options(fragile_path: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "lmul-onnx-plan", "version": 1, "nodes": []}')
    code, output = invoke("convert", str(fragile_path), "--plan", str(plan), "--ops", "MatMul")
    assert code == 2 and "--plan replaces the selection options; drop --ops" in output


def test_plan_api_errors() -> None:
    with pytest.raises(PlanError, match="no such file"):
        load_plan("/nonexistent/plan.json")
    with pytest.raises(TuneError, match="--jobs"):
        tune(fragile_model(), budget=Budget(min_cosine=0.9), jobs=0)


def test_unreachable_budget_exits_2(fragile_path: Path, tmp_path: Path) -> None:
    """A metric no variant can meet, not even the unconverted model."""
    metric = tmp_path / "always.py"
    metric.write_text("def bad(original, converted, inputs):\n    return 1.0\n")
    code, output = invoke(
        "tune", str(fragile_path), "--metric", f"{metric}:bad", "--max-loss", "0", "--jobs", "1",
        "-o", str(tmp_path / "o.onnx"),
    )  # fmt: skip
    assert code == 2 and "fails even with no node converted" in output, output


def test_plot(fragile_path: Path, tmp_path: Path) -> None:
    """--plot draws the search with matplotlib, or says in one line that it is missing."""
    import importlib.util

    picture = tmp_path / "tune.png"
    code, output = invoke(
        "tune", str(fragile_path), "--min-cosine", "0.99", "--dim", "batch=4", "--jobs", "1",
        "-o", str(tmp_path / "o.onnx"), "--plot", str(picture),
    )  # fmt: skip
    if importlib.util.find_spec("matplotlib") is None:
        assert code == 2 and "--plot needs matplotlib" in output and len(output.strip().splitlines()) == 1
    else:
        assert code == 0, output
        assert picture.read_bytes().startswith(b"\x89PNG")


def test_node_that_turns_the_output_nan_stays_exact(tmp_path: Path) -> None:
    """sqrt(3x - (x + x + x)) is sqrt(0) exactly; with L-Mul on 3x it is the square root
    of a negative number for many x: the fully converted model outputs NaN."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        *exactly_zero("nan_maker"),
        helper.make_node("Sqrt", ["d"], ["r"]),
        helper.make_node("Add", ["y", "r"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])],
        [
            numpy_helper.from_array(np.abs(rng.standard_normal((16, 8))).astype(np.float32), "W"),
            numpy_helper.from_array(np.float32([3.0]), "three"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    full = lmul_onnx.validate(model, lmul_onnx.convert(model), input_ranges={"x": (0.0, 1.0)})
    assert full.outputs["out"]["nan_mismatches"] > 0
    result = tune(
        model, tmp_path / "out.onnx", budget=Budget(min_cosine=0.99), input_ranges={"x": (0.0, 1.0)}
    )
    assert decisions(result.plan)["nan_maker"][0] is False and decisions(result.plan)["mm"][0] is True
    report = lmul_onnx.validate(model, onnx.load(tmp_path / "out.onnx"), input_ranges={"x": (0.0, 1.0)})
    assert report.outputs["out"]["nan_mismatches"] == 0 and report.outputs["out"]["cosine"] >= 0.99


def test_outputs_are_checked_before_the_search(fragile_path: Path, tmp_path: Path) -> None:
    """An existing output or plan is refused up front (exit 2, one line, untouched) unless
    --overwrite; an output that is the input, or a symlink, is refused like convert does."""
    existing = tmp_path / "o.onnx"
    existing.write_bytes(b"keep me")
    budget = ["--min-cosine", "0.99", "--jobs", "1"]
    code, output = invoke("tune", str(fragile_path), "-o", str(existing), *budget)
    assert code == 2 and len(output.strip().splitlines()) == 1 and "--overwrite" in output, output
    assert existing.read_bytes() == b"keep me"

    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    args = ["-o", str(tmp_path / "new.onnx"), "--plan-out", str(plan), "--min-cosine", "0.99", "--jobs", "1"]
    code, output = invoke("tune", str(fragile_path), *args)
    assert code == 2 and "--plan-out" in output and "--overwrite" in output, output
    assert plan.read_text() == "{}" and not (tmp_path / "new.onnx").exists()

    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "elsewhere.onnx")
    code, output = invoke("tune", str(fragile_path), "-o", str(link), *budget)
    assert code == 2 and "symbolic link" in output, output
    assert not (tmp_path / "elsewhere.onnx").exists()

    code, output = invoke("tune", str(fragile_path), *args, "--overwrite")
    assert code == 0, output
    assert onnx.load(str(tmp_path / "new.onnx")).graph.node and load_plan(plan).nodes


def test_python_api_refuses_an_existing_output(fragile_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "o.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="--overwrite"):
        tune(fragile_path, target, budget=Budget(min_cosine=0.99))
    assert target.read_bytes() == b"keep me"


def length_model() -> onnx.ModelProto:
    """out = (x @ W) flattened, followed by n zeros scaled by 0.7, n = 4 + ceil(1000 |sum(3y - (y + y + y))|).

    Exactly the sum is 0 and n = 4; with L-Mul on ``length_maker`` the output grows, as a
    speech model's output grows with a mispredicted duration. The last product's shape
    follows the data: shape inference cannot know it."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        *exactly_zero("length_maker"),
        helper.make_node("ReduceSum", ["d"], ["s"], keepdims=0),
        helper.make_node("Abs", ["s"], ["a"]),
        helper.make_node("Mul", ["a", "thousand"], ["k"], name="scale_sum"),
        helper.make_node("Ceil", ["k"], ["c"]),
        helper.make_node("Add", ["c", "four"], ["f"]),
        helper.make_node("Cast", ["f"], ["n0"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["n0", "one_dim"], ["n"]),
        helper.make_node("ConstantOfShape", ["n"], ["z"]),
        helper.make_node("Reshape", ["y", "flat"], ["yf"]),
        helper.make_node("Concat", ["yf", "z"], ["cat"], axis=0),
        helper.make_node("Mul", ["cat", "gain"], ["out"], name="gain_mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "length",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["length"])],
        [
            numpy_helper.from_array(np.abs(rng.standard_normal((16, 8))).astype(np.float32), "W"),
            numpy_helper.from_array(np.float32([3.0]), "three"),
            numpy_helper.from_array(np.float32(1000.0), "thousand"),
            numpy_helper.from_array(np.float32(4.0), "four"),
            numpy_helper.from_array(np.int64([1]), "one_dim"),
            numpy_helper.from_array(np.int64([-1]), "flat"),
            numpy_helper.from_array(np.float32([0.7]), "gain"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_variant_that_changes_the_output_length_fails_and_energy_follows_the_data(tmp_path: Path) -> None:
    """A converted variant whose output shape differs from the original's fails the budget
    (the search goes on; before, the comparison raised and tune gave up with exit 2), and
    the products whose shapes only a run can tell are priced from a run."""
    model = length_model()
    ranges = {"x": (0.0, 1.0)}
    full = lmul_onnx.validate(model, lmul_onnx.convert(model, every_product=True), input_ranges=ranges)
    assert not full.passed and "shapes differ" in full.outputs["out"]["error"]
    result = tune(model, tmp_path / "out.onnx", budget=Budget(min_cosine=0.99), input_ranges=ranges)
    assert result.passed
    decided = decisions(result.plan)
    assert decided["length_maker"][0] is False and decided["mm"][0] is True
    assert "shapes differ" in decided["length_maker"][1]
    energy = {n["node"]: n["energy_pj"] for n in result.plan.nodes}
    # 4 x 8 products, then 32 + 4 gains: only a run knows the 36
    assert energy["gain_mul"]["original"] == pytest.approx(36 * 3.7)
    assert energy["mm"]["original"] == pytest.approx(32 * (16 * 3.7 + 15 * 0.9))
    assert result.energy["unknown_nodes"] == 0
    report = lmul_onnx.validate(model, onnx.load(tmp_path / "out.onnx"), input_ranges=ranges)
    assert report.passed


def test_nodes_that_break_the_budget_alone_get_a_second_chance_together(tmp_path: Path) -> None:
    """out = tanh(x) + (x * 3 + x * -3). Exactly the bracket is 0; L-Mul's error is odd in
    the sign, so with both products converted it is 0 again, while either one alone leaves
    3x times its relative error: each breaks the budget alone, the two together keep it."""
    nodes = [
        helper.make_node("Tanh", ["x"], ["y"]),
        helper.make_node("Mul", ["x", "three"], ["a"], name="plus"),
        helper.make_node("Mul", ["x", "minus_three"], ["b"], name="minus"),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Add", ["y", "s"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cancel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 16])],
        [
            numpy_helper.from_array(np.float32([3.0]), "three"),
            numpy_helper.from_array(np.float32([-3.0]), "minus_three"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    budget = Budget(atol=1e-6, rtol=0.0)
    result = tune(model, tmp_path / "out.onnx", budget=budget, input_ranges={"x": (0.0, 1.0)})
    decided = decisions(result.plan)
    assert result.passed and decided["plus"][0] and decided["minus"][0]
    assert all(
        decided[name][1].startswith("within budget at the second chance (first: breaks the budget alone")
        and n["drift"]["passed"] is False
        for name in ("plus", "minus")
        for n in result.plan.nodes
        if n["node"] == name
    )
    assert [t["step"] for t in result.trace] == ["retry 2 (ranks 1-2)"]
    report = lmul_onnx.validate(
        model, onnx.load(tmp_path / "out.onnx"), input_ranges={"x": (0.0, 1.0)}, atol=1e-6, rtol=0.0
    )
    assert report.passed and report.outputs["out"]["max_abs"] == 0
