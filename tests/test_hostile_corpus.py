"""A seeded corpus of malformed and hostile inputs through every verb.

Each case runs the command in-process (click's CliRunner) inside a folder of its own
and asserts: the exit code, no Python traceback, exactly one line of output when the
command fails, no file left behind, and every file that was there byte-for-byte
unchanged. The corpus is generated from a fixed seed: corrupted and truncated model
files, bad option values, bad ``.npz`` inputs (pickled arrays among them), bad paths,
symbolic links and external-data tricks.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lmul_onnx.cli.main import main

SEED = 20251125
BAD = 2
ANY_OUTCOME = frozenset({0, 1, 2})  # a corruption that may leave a valid model; never 3 (a bug)


def _model(external: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "h"], ["y"], name="sq"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid files the cases copy and corrupt: a model, its conversion, inputs."""
    folder = tmp_path_factory.mktemp("assets")
    onnx.save(_model(), folder / "model.onnx")
    result = CliRunner().invoke(
        main, ["convert", str(folder / "model.onnx"), "-o", str(folder / "conv.onnx"), "-q"]
    )
    assert result.exit_code == 0, result.output
    np.savez(folder / "inputs.npz", x=np.ones((2, 8), np.float32))
    return folder


@dataclass
class Case:
    """One hostile run: ``args`` may name files that ``setup`` writes in the case folder."""

    id: str
    args: list[str]
    codes: frozenset[int] = frozenset({BAD})
    setup: Callable[[Path, Path], None] = lambda folder, assets: None
    files: tuple[str, ...] = ("model.onnx",)
    may_write: tuple[str, ...] = field(default_factory=tuple)


def _copy(folder: Path, assets: Path, names: tuple[str, ...]) -> None:
    for name in names:
        shutil.copy(assets / name, folder / name)


def _write(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path, Path], None]:
    def setup(folder: Path, assets: Path) -> None:
        (folder / name).write_bytes(data(assets) if callable(data) else data)

    return setup


def _model_bytes(assets: Path) -> bytes:
    return (assets / "model.onnx").read_bytes()


def _corruptions() -> list[tuple[str, Callable[[Path], bytes], frozenset[int]]]:
    """Seeded corruptions of a valid model's bytes, with the outcomes each allows."""
    rng = np.random.default_rng(SEED)
    result: list[tuple[str, Callable[[Path], bytes], frozenset[int]]] = [
        ("empty", lambda a: b"", frozenset({BAD})),
        ("one-byte", lambda a: b"\x08", frozenset({BAD})),
        ("text", lambda a: b"hello, I am not a model\n", frozenset({BAD})),
        ("json", lambda a: b'{"graph": {"node": []}}', frozenset({BAD})),
        ("zeros", lambda a: bytes(4096), frozenset({BAD})),
        ("npz", lambda a: (a / "inputs.npz").read_bytes(), frozenset({BAD})),
        ("huge-length", lambda a: b"\x3a\xff\xff\xff\xff\x0f" + bytes(16), frozenset({BAD})),
        ("twice", lambda a: _model_bytes(a) * 2, frozenset({BAD})),
    ]
    for i in range(12):
        size = int(rng.integers(1, 3000))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        result.append((f"random-{i}", lambda a, d=data: d, frozenset({BAD})))
    for i, fraction in enumerate(rng.uniform(0.05, 0.95, 12)):
        result.append(
            (
                f"truncated-{i}",
                lambda a, f=fraction: _model_bytes(a)[: int(len(_model_bytes(a)) * f)],
                ANY_OUTCOME,
            )
        )
    for i in range(14):
        flips = rng.integers(0, 1 << 30, int(rng.integers(1, 6)))

        def flipped(a: Path, flips: np.ndarray = flips) -> bytes:
            data = bytearray(_model_bytes(a))
            for flip in flips:
                data[int(flip) % len(data)] ^= 1 << int(flip % 8)
            return bytes(data)

        result.append((f"bitflip-{i}", flipped, ANY_OUTCOME))
    return result


def _external(
    location: str, *, offset: int = 0, length: int | None = None, data: str = "weights.bin"
) -> Callable[[Path, Path], None]:
    """A model ``ext.onnx`` whose weight W is stored externally at ``location`` (written
    as given); the weights themselves are in ``data``."""

    def setup(folder: Path, assets: Path) -> None:
        model = _model()
        tensor = model.graph.initializer[0]
        raw = numpy_helper.to_array(tensor).tobytes()
        (folder / "sub").mkdir(exist_ok=True)
        (folder / data).write_bytes(raw)
        (folder.parent / "outside.bin").write_bytes(raw)
        tensor.ClearField("float_data")
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entries = {"location": location, "offset": str(offset)}
        if length is not None:
            entries["length"] = str(length)
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=value)
        (folder / "ext.onnx").write_bytes(model.SerializeToString())

    return setup


def _npz(kind: str) -> Callable[[Path, Path], None]:
    def setup(folder: Path, assets: Path) -> None:
        path = folder / "bad.npz"
        if kind == "pickled":
            np.savez(path, x=np.array([{"evil": 1}, None], dtype=object))
        elif kind == "pickle-file":
            path.write_bytes(pickle.dumps({"x": np.ones((2, 8), np.float32)}))
        elif kind == "npy":
            np.save(folder / "bad.npy", np.ones((2, 8), np.float32))
            (folder / "bad.npy").rename(path)
        elif kind == "empty-archive":
            np.savez(path)
        elif kind == "wrong-name":
            np.savez(path, z=np.ones((2, 8), np.float32))
        elif kind == "extra-name":
            np.savez(path, x=np.ones((2, 8), np.float32), z=np.ones(1))
        elif kind == "wrong-dtype":
            np.savez(path, x=np.ones((2, 8), np.float64))
        elif kind == "wrong-rank":
            np.savez(path, x=np.ones((8,), np.float32))
        elif kind == "wrong-dim":
            np.savez(path, x=np.ones((2, 7), np.float32))
        elif kind == "int-input":
            np.savez(path, x=np.ones((2, 8), np.int64))
        elif kind == "sample-missing":
            np.savez(path, **{"0/x": np.ones((2, 8), np.float32), "1/z": np.ones((2, 8), np.float32)})
        elif kind == "truncated":
            np.savez(path, x=np.ones((2, 8), np.float32))
            path.write_bytes(path.read_bytes()[:100])
        elif kind == "garbage":
            path.write_bytes(b"PK\x03\x04garbage" * 10)
        else:
            raise AssertionError(kind)

    return setup


NPZ_KINDS = (
    "pickled",
    "pickle-file",
    "npy",
    "empty-archive",
    "wrong-name",
    "extra-name",
    "wrong-dtype",
    "wrong-rank",
    "wrong-dim",
    "int-input",
    "sample-missing",
    "truncated",
    "garbage",
)


def _symlink(name: str, target: str) -> Callable[[Path, Path], None]:
    def setup(folder: Path, assets: Path) -> None:
        os.symlink(target if target.startswith("/") else folder / target, folder / name)

    return setup


def _file_as_folder(folder: Path, assets: Path) -> None:
    (folder / "afile").write_text("I am a file, not a folder\n")


def _existing(name: str) -> Callable[[Path, Path], None]:
    def setup(folder: Path, assets: Path) -> None:
        (folder / name).write_text("precious\n")

    return setup


def _table(text: bytes, name: str = "table.json") -> Callable[[Path, Path], None]:
    return _write(name, text)


def _cases() -> list[Case]:
    cases: list[Case] = []
    # 1. Corrupted model files through every verb that reads a model.
    for name, data, codes in _corruptions():
        setup = _write("bad.onnx", data)
        cases += [
            Case(
                f"convert-{name}", ["convert", "{bad.onnx}", "-o", "{out/x.onnx}"], codes, setup, (), ("out",)
            ),
            Case(
                f"validate-original-{name}",
                ["validate", "{bad.onnx}", "{conv.onnx}"],
                codes,
                setup,
                ("conv.onnx",),
            ),
            Case(f"validate-converted-{name}", ["validate", "{model.onnx}", "{bad.onnx}"], codes, setup),
            Case(f"energy-{name}", ["energy", "{bad.onnx}", "--dim", "batch=1"], codes - {1}, setup, ()),
        ]
    # 2. Bad paths.
    for verb_args in (["convert"], ["energy"], ["validate", "{model.onnx}"]):
        verb = verb_args[0]
        cases += [
            Case(f"{verb}-missing", [*verb_args, "{missing.onnx}"]),
            Case(f"{verb}-folder", [*verb_args, "{sub}"], setup=lambda f, a: (f / "sub").mkdir()),
            Case(
                f"{verb}-dangling-link", [*verb_args, "{link.onnx}"], setup=_symlink("link.onnx", "gone.onnx")
            ),
            Case(f"{verb}-link-to-folder", [*verb_args, "{link.onnx}"], setup=_symlink("link.onnx", "/")),
            Case(f"{verb}-inside-file", [*verb_args, "{afile/x.onnx}"], setup=_file_as_folder),
            Case(f"{verb}-dev-null", [*verb_args, "/dev/null"]),
            Case(f"{verb}-empty-name", [*verb_args, ""]),
        ]
    # 3. convert: option values.
    convert_options = [
        ["--ops", "Softmax"],
        ["--ops", "MatMul,Softmax"],
        ["--ops", ","],
        ["--ops", "matmul"],
        ["--scope", "everything"],
        ["--include", "("],
        ["--exclude", "[a-"],
        ["--include", "*"],
        ["--mantissa-bits", "0"],
        ["--mantissa-bits", "24"],
        ["--mantissa-bits", "-3"],
        ["--mantissa-bits", "x"],
        ["--mantissa-bits", ""],
        ["--mantissa-bits-for", "mm"],
        ["--mantissa-bits-for", "=3"],
        ["--mantissa-bits-for", "mm=x"],
        ["--mantissa-bits-for", "mm=0"],
        ["--mantissa-bits-for", "mm=99"],
        ["--mantissa-bits-for", "(=3"],
        ["--mantissa-bits-for", "mm=3", "--mantissa-bits-for", "mm=4"],
        ["--dim", "batch"],
        ["--dim", "batch=0"],
        ["--dim", "batch=-1"],
        ["--dim", "batch=x"],
        ["--dim", "batch=1.5"],
        ["--dim", "btach=1"],
        ["--dim", "batch=1", "--dim", "batch=2"],
        ["--dim", "=4"],
        ["--json"],
        ["--json", "{afile/r.json}"],
        ["--bogus"],
        ["-o"],
        ["-o", "{model.onnx}"],
        ["-o", "{./sub/../model.onnx}"],
        ["-o", "{sub}"],
        ["-o", "{afile/x.onnx}"],
        ["-o", "{existing.onnx}"],
        ["-o", "{link.onnx}"],
        ["-o", "{dangling.onnx}"],
        ["-o", "{hard.onnx}"],
        ["-o", "{model.onnx}", "--overwrite"],
        ["-o", "{link.onnx}", "--overwrite"],
    ]

    def convert_setup(folder: Path, assets: Path) -> None:
        (folder / "sub").mkdir()
        _file_as_folder(folder, assets)
        (folder / "existing.onnx").write_text("precious\n")
        os.symlink(folder / "elsewhere.onnx", folder / "link.onnx")
        (folder / "elsewhere.onnx").write_text("elsewhere\n")
        os.symlink(folder / "nowhere.onnx", folder / "dangling.onnx")
        os.link(folder / "model.onnx", folder / "hard.onnx")

    for i, options in enumerate(convert_options):
        cases.append(
            Case(
                f"convert-option-{i}-{'_'.join(options)[:30]}",
                ["convert", "{model.onnx}", *options],
                setup=convert_setup,
            )
        )
    # 4. convert: external-data tricks (the input's own weights are never an output).
    external = [
        ("escape", "../outside.bin", {}),
        ("absolute", "/etc/hostname", {}),
        ("missing", "missing.bin", {}),
        ("folder", ".", {}),
        ("itself", "ext.onnx", {}),
        ("too-long", "weights.bin", {"length": 10**6}),
        ("offset-past-end", "weights.bin", {"offset": 10**6}),
        ("negative-offset", "weights.bin", {"offset": -8}),
    ]
    for name, location, extra in external:
        setup = _external(location, **extra)
        cases += [
            Case(
                f"convert-external-{name}",
                ["convert", "{ext.onnx}", "-o", "{out/x.onnx}"],
                setup=setup,
                files=(),
            ),
            Case(
                f"energy-external-{name}", ["energy", "{ext.onnx}", "--dim", "batch=1"], setup=setup, files=()
            ),
            Case(
                f"validate-external-{name}", ["validate", "{ext.onnx}", "{ext.onnx}"], setup=setup, files=()
            ),
        ]
    for spelling in ("weights.bin", "./weights.bin", "sub/../weights.bin", "./sub/../weights.bin"):
        cases.append(
            Case(
                f"convert-over-external-{spelling}",
                ["convert", "{ext.onnx}", "-o", "{" + spelling + "}", "--overwrite"],
                setup=_external("weights.bin"),
                files=(),
            )
        )
    for location in ("x.onnx.data", "./x.onnx.data", "sub/../x.onnx.data"):
        for spelling in ("x.onnx", "sub/../x.onnx"):
            cases.append(
                Case(
                    f"convert-data-over-external-{location}-{spelling}",
                    ["convert", "{ext.onnx}", "-o", "{" + spelling + "}", "--overwrite"],
                    setup=_external(location, data="x.onnx.data"),
                    files=(),
                )
            )
    # 5. validate: option values.
    validate_options = [
        ["--atol", "x"],
        ["--atol", "-1"],
        ["--atol", "nan"],
        ["--atol", "inf"],
        ["--atol", "nothere:1"],
        ["--atol", "y:x"],
        ["--rtol", "x"],
        ["--rtol", "-0.5"],
        ["--rtol", "nothere:1"],
        ["--min-cosine", "2"],
        ["--min-cosine", "x"],
        ["--samples", "0"],
        ["--samples", "-1"],
        ["--samples", "x"],
        ["--seed", "x"],
        ["--dim", "batch"],
        ["--dim", "batch=0"],
        ["--dim", "batch=-1"],
        ["--dim", "btach=2"],
        ["--dim", "batch=1", "--dim", "batch=2"],
        ["--input-range", "x=1"],
        ["--input-range", "x=a:b"],
        ["--input-range", "x=5:1"],
        ["--input-range", "x=1:1"],
        ["--input-range", "x=nan:1"],
        ["--input-range", "x=-inf:1"],
        ["--input-range", "nope=0:1"],
        ["--compare", "fp4"],
        ["--compare", "fp8-e4m3,fp4"],
        ["--logits", "nope"],
        ["--sort", "best"],
        ["--threads", "0"],
        ["--threads", "x"],
        ["--json"],
        ["--json", "{afile/r.json}"],
        ["--json", "{model.onnx}"],
        ["--json", "{link.json}"],
        ["--json", "{sub}"],
        ["--save-inputs", "{conv.onnx}"],
        ["--save-inputs", "{afile/i.npz}"],
        ["--save-inputs", "{link.json}"],
        ["--inputs", "{missing.npz}"],
        ["--inputs", "{sub}"],
        ["--inputs", "{model.onnx}"],
        ["--bogus"],
    ]

    def validate_setup(folder: Path, assets: Path) -> None:
        (folder / "sub").mkdir()
        _file_as_folder(folder, assets)
        os.symlink(folder / "elsewhere.json", folder / "link.json")

    for i, options in enumerate(validate_options):
        cases.append(
            Case(
                f"validate-option-{i}-{'_'.join(options)[:30]}",
                ["validate", "{model.onnx}", "{conv.onnx}", *options],
                setup=validate_setup,
                files=("model.onnx", "conv.onnx"),
            )
        )
    for kind in NPZ_KINDS:
        cases.append(
            Case(
                f"validate-npz-{kind}",
                ["validate", "{model.onnx}", "{conv.onnx}", "--inputs", "{bad.npz}"],
                setup=_npz(kind),
                files=("model.onnx", "conv.onnx"),
            )
        )
        cases.append(
            Case(
                f"validate-npz-{kind}-saving",
                [
                    "validate",
                    "{model.onnx}",
                    "{conv.onnx}",
                    "--inputs",
                    "{bad.npz}",
                    "--save-inputs",
                    "{s.npz}",
                ],
                setup=_npz(kind),
                files=("model.onnx", "conv.onnx"),
            )
        )
    # 6. validate: two unrelated models, and models onnxruntime refuses.
    cases.append(
        Case(
            "validate-unrelated-per-node",
            ["validate", "{other.onnx}", "{conv.onnx}", "--per-node"],
            setup=lambda f, a: onnx.save(_unrelated(), f / "other.onnx"),
            files=("conv.onnx",),
        )
    )
    cases.append(
        Case(
            "validate-different-inputs",
            ["validate", "{model.onnx}", "{renamed.onnx}"],
            setup=lambda f, a: onnx.save(_renamed_input(), f / "renamed.onnx"),
        )
    )
    for name, model in _refused_models():
        cases.append(
            Case(
                f"validate-refused-{name}",
                ["validate", "{r.onnx}", "{r.onnx}"],
                setup=lambda f, a, m=model: (f / "r.onnx").write_bytes(m.SerializeToString()),
                files=(),
            )
        )
    # 7. energy: tables and options.
    tables = [
        ("garbage", b"\xff\xfe not utf-8", "table.json"),
        ("list", b"[1, 2]", "table.json"),
        ("string", b'{"fp32_mul": "a lot"}', "table.json"),
        ("negative", b'{"fp32_mul": -1}', "table.json"),
        ("bool", b'{"fp32_mul": true}', "table.json"),
        ("null", b'{"fp32_mul": null}', "table.json"),
        ("unknown", b'{"fp64_mul": 1}', "table.json"),
        ("nan", b'{"fp32_mul": NaN}', "table.json"),
        ("bad-toml", b"fp32_mul = = 1", "table.toml"),
        ("toml-string", b'fp32_mul = "x"', "table.toml"),
        ("empty", b"", "table.json"),
    ]
    for name, text, file in tables:
        cases.append(
            Case(
                f"energy-table-{name}",
                ["energy", "{model.onnx}", "--dim", "batch=1", "--table", "{" + file + "}"],
                setup=_table(text, file),
            )
        )
    for i, options in enumerate(
        [
            ["--table", "{missing.json}"],
            ["--table", "{sub}"],
            ["--dim", "batch=0"],
            ["--dim", "btach=1"],
            ["--dim", "batch"],
            ["--mantissa-bits", "0"],
            ["--json", "{afile/e.json}"],
            ["--json", "{model.onnx}"],
            [],  # unbound dimension: names it
        ]
    ):
        cases.append(Case(f"energy-option-{i}", ["energy", "{model.onnx}", *options], setup=validate_setup))
    # 8. precision, models, the group itself.
    cases += [
        Case("precision-pairs-small", ["precision", "--pairs", "10"], files=()),
        Case("precision-pairs-x", ["precision", "--pairs", "x"], files=()),
        Case("precision-seed-x", ["precision", "--seed", "x"], files=()),
        Case("precision-json-missing", ["precision", "--json"], files=()),
        Case(
            "precision-json-inside-file",
            ["precision", "--pairs", "1000", "--json", "{afile/p.json}"],
            setup=_file_as_folder,
            files=(),
        ),
        Case("models-path-unknown", ["models", "path", "no-such-model"], files=()),
        Case("models-path-missing-arg", ["models", "path"], files=()),
        Case("models-bogus", ["models", "bogus"], files=()),
        Case("unknown-verb", ["frobnicate"], files=()),
        Case("unknown-global-option", ["--frobnicate"], files=()),
        Case("convert-no-argument", ["convert"], files=()),
        Case("validate-one-argument", ["validate", "{model.onnx}"]),
        Case("energy-two-arguments", ["energy", "{model.onnx}", "{model.onnx}"]),
    ]
    return cases


def _unrelated() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _renamed_input() -> onnx.ModelProto:
    model = _model()
    model.graph.input[0].name = "z"
    model.graph.node[0].input[0] = "z"
    return model


def _refused_models() -> list[tuple[str, onnx.ModelProto]]:
    """Models onnxruntime refuses to load: unknown op, cycle, IR 99, dangling input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])

    def model(nodes: list[onnx.NodeProto], ir_version: int = 9) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "g", [x], [y])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)

    return [
        ("unknown-op", model([helper.make_node("Frobnicate", ["x"], ["y"])])),
        (
            "cycle",
            model([helper.make_node("Add", ["x", "z"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]),
        ),
        ("ir99", model([helper.make_node("Relu", ["x"], ["y"])], ir_version=99)),
        ("dangling", model([helper.make_node("Add", ["x", "nowhere"], ["y"])])),
        ("no-output", model([helper.make_node("Relu", ["x"], ["z"])])),
    ]


CASES = _cases()


def _snapshot(folder: Path) -> dict[str, str]:
    """relative path -> content hash (links as their target) of everything in ``folder``."""
    result = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            result[key] = "link:" + os.readlink(path)
        elif path.is_file():
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[key] = "folder"
    return result


def test_corpus_size() -> None:
    assert len(CASES) >= 300
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input(case: Case, assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    _copy(folder, assets, case.files)
    case.setup(folder, assets)
    before = _snapshot(folder)
    outside = _snapshot(tmp_path)
    args = [str(folder / a[1:-1]) if a.startswith("{") and a.endswith("}") else a for a in case.args]
    env = {"LMUL_ONNX_DEBUG": ""}
    result = CliRunner().invoke(main, args, env=env)
    output = result.output
    assert result.exit_code in case.codes, output
    assert "Traceback" not in output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    if result.exit_code == BAD:
        assert len(output.strip().splitlines()) == 1, output
        assert output.startswith("Error: "), output
    after = _snapshot(folder)
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} changed"
    new = [name for name in after if name not in before]
    if result.exit_code != 0:
        assert not new, f"left behind: {new}"
    else:
        allowed = ("out", "out/x.onnx", "out/x.onnx.data", "model.lmul.onnx")
        assert all(name in allowed or name in case.may_write for name in new), new
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("case")} == {
        k: v for k, v in outside.items() if not k.startswith("case")
    }
