"""examples/cpp/run_model.cc against a real libonnxruntime (Debian's), bit for bit.

The shared library and its dependencies come from Debian's package registry the way the
build fetches the headers (custom_ops/cmake/fetch_ort_headers.sh --runtime), cached in
build/onnxruntime-runtime. Where the machine's C library is older than Debian trixie's,
the example runs under the fetched C library's own loader.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx import zoo

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "cpp" / "run_model.cc"
CACHE = REPO / "build" / "onnxruntime-runtime"
FETCH = REPO / "custom_ops" / "cmake" / "fetch_ort_headers.sh"
UNREACHABLE = re.compile(
    r"Failed to fetch|Temporary failure resolving|Could not (resolve|connect)|Unable to connect"
)


def _library_dir(root: Path) -> Path | None:
    found = sorted(root.glob("usr/lib/*/libonnxruntime.so"))
    return found[0].parent if found else None


def _glibc(version_text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)", version_text)
    return tuple(int(x) for x in match.groups()) if match else (0, 0)


@pytest.fixture(scope="session")
def onnxruntime_root() -> Path:
    """Debian's libonnxruntime with its dependency closure (fetched once, then cached)."""
    if _library_dir(CACHE) is None:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.skip("Debian's package registry is out of reach: no apt-get/dpkg-deb on this machine")
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".onnxruntime-runtime.", dir=CACHE.parent))
        fetch = subprocess.run(
            ["bash", str(FETCH), str(staging), "--runtime"], capture_output=True, text=True, timeout=600
        )
        if fetch.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            if UNREACHABLE.search(fetch.stderr + fetch.stdout):
                pytest.skip(f"Debian's package registry is unreachable: {fetch.stderr.strip()[-300:]}")
            pytest.fail(f"fetching libonnxruntime failed:\n{fetch.stdout}\n{fetch.stderr}")
        shutil.rmtree(CACHE, ignore_errors=True)
        staging.rename(CACHE)
    return CACHE


@pytest.fixture(scope="session")
def run_model(onnxruntime_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The built example, as the command prefix that runs it against that onnxruntime."""
    library_dir = _library_dir(onnxruntime_root)
    assert library_dir is not None
    binary = tmp_path_factory.mktemp("cpp") / "run_model"
    compiler = shutil.which("c++") or "g++"
    build = [
        compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", str(SOURCE), "-o", str(binary),
        f"-I{onnxruntime_root / 'usr/include/onnxruntime'}", f"-L{library_dir}", "-lonnxruntime",
        # Resolve libonnxruntime's own dependencies against the fetched ones, whatever the
        # machine's glibc; libstdc++ statically, so the fetched one serves onnxruntime alone.
        "-Wl,--allow-shlib-undefined", f"-Wl,-rpath-link,{library_dir}",
        "-static-libstdc++", "-static-libgcc",
    ]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, text=True)
    loaders = sorted((onnxruntime_root / "libc").glob("usr/lib*/ld-linux*.so*"))
    fetched = subprocess.run([str(loaders[0]), "--version"], capture_output=True, text=True).stdout
    if _glibc(os.confstr("CS_GNU_LIBC_VERSION") or "") >= _glibc(fetched.splitlines()[0]):
        return ["env", f"LD_LIBRARY_PATH={library_dir}", str(binary)]
    libc_dir = next((onnxruntime_root / "libc").glob("usr/lib/*/libc.so.6")).parent
    return [str(loaders[0]), "--library-path", f"{library_dir}:{libc_dir}", str(binary)]


def _run_cpp(command: list[str], model: Path, feeds: dict[str, np.ndarray], work: Path) -> list[np.ndarray]:
    files = []
    for name, value in feeds.items():
        files.append(work / f"{name}.npy")
        np.save(files[-1], value)
    result = subprocess.run(
        [*command, str(model), lmul_onnx.get_library_path(), *map(str, files), "--save", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outputs = sorted(work.glob("output_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    assert len(outputs) == len(result.stdout.splitlines()), result.stdout
    return [np.load(p) for p in outputs]


def _python_run(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return lmul_onnx.InferenceSession(model).run(None, feeds)


def _products_model() -> onnx.ModelProto:
    """MatMul -> Gemm -> Mul with constant weights: every op converts to lmul."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((16, 12)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((12, 8)).astype(np.float32), "g")
    c = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "c")
    s = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "s")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Gemm", ["h", "g", "c"], ["k"], name="gemm", alpha=0.5),
        helper.make_node("Mul", ["k", "s"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "products",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [w, g, c, s],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_cpp_example_matches_python_bit_for_bit(run_model: list[str], tmp_path: Path) -> None:
    converted = tmp_path / "products.lmul.onnx"
    lmul_onnx.convert(_products_model(), converted, mantissa_bits=4)
    feeds = {"x": np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)}
    cpp = _run_cpp(run_model, converted, feeds, tmp_path)
    python = _python_run(converted, feeds)
    assert len(cpp) == len(python) == 1
    assert cpp[0].dtype == python[0].dtype and cpp[0].shape == python[0].shape
    assert np.array_equal(cpp[0].view(np.uint32), python[0].view(np.uint32))


def test_cpp_example_runs_converted_minilm(run_model: list[str], tmp_path: Path) -> None:
    """A real converted model. Its lmul nodes run in the same library either way, but its
    other ops (LayerNormalization, Softmax, Erf...) in Debian's onnxruntime 1.21 against
    PyPI's: close (1e-3 of the output's scale), not bit-exact, and far closer than to the
    original model (L-Mul at m = 4 moves the embeddings by a few per cent)."""
    source = zoo.path("paraphrase-minilm-l3")
    converted = tmp_path / "minilm.lmul.onnx"
    # every_product: GELU's exact halvings become LMul too, so neither onnxruntime fuses
    # the pattern into its own Gelu kernel (their fusions differ between 1.21 and 1.32).
    lmul_onnx.convert(source, converted, mantissa_bits=4, every_product=True)
    rng = np.random.default_rng(11)
    feeds = {
        "input_ids": rng.integers(1000, 3000, (1, 12)).astype(np.int64),
        "attention_mask": np.ones((1, 12), np.int64),
    }
    cpp = _run_cpp(run_model, converted, feeds, tmp_path)
    python = _python_run(converted, feeds)
    original = lmul_onnx.InferenceSession(source).run(None, feeds)
    for ours, theirs, before in zip(cpp, python, original, strict=True):
        assert ours.shape == theirs.shape
        if ours.dtype.kind != "f":
            assert np.array_equal(ours, theirs)
            continue
        scale = float(np.abs(theirs).max())
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3 * scale)
        assert np.abs(ours - before).max() > 10 * 1e-3 * scale


def test_cpp_example_reports_a_bad_model(run_model: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = subprocess.run(
        [*run_model, str(bad), lmul_onnx.get_library_path()], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ")
