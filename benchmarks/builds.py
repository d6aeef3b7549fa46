"""Two or more builds of the lmul custom-op library against onnxruntime, side by side in one process.

For before/after figures of a kernel change that the machine's load would otherwise
drown: every build's library is registered in its own session
(``SessionOptions.register_custom_ops_library``), and the sessions run in interleaved
rounds on the same data, with onnxruntime's own op as the reference. Prints, per
session, the fastest and the median run and their ratios to onnxruntime (higher is
better), after checking that all builds return the same bits.

    python benchmarks/builds.py OLD/liblmul_onnx_ops.so NEW/liblmul_onnx_ops.so
                                [--case mul|wide|wide-zeros|overflow-zeros|attention|pv] [--threads 1]
                                [--rounds 30]

A build's library is ``lmul_onnx/liblmul_onnx_ops.so`` in its installed package, e.g.
``pip install --no-deps --target /tmp/old .`` from a checkout of the old revision.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from lmul_onnx.runtime import cpu_name


def model(op: str, domain: str, shapes: list[tuple[int, ...]]) -> bytes:
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
        for n, s in zip("AB", shapes, strict=True)
    ]
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"], domain=domain)],
        "builds",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("lmul", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def session(data: bytes, threads: int, library: Path | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def operands(case: str, rng: np.random.Generator) -> tuple[str, dict[str, np.ndarray]]:
    """The op ("Mul" or "MatMul") and inputs of a case of benchmarks/kernels.py."""
    if case == "mul":
        n = 4 << 20
        return "Mul", {k: rng.standard_normal(n).astype(np.float32) for k in "AB"}

    def wide() -> np.ndarray:
        signs = rng.choice([-1, 1], (1024, 1024))
        return (np.exp(rng.uniform(-80, 80, (1024, 1024))) * signs).astype(np.float32)

    if case in ("attention", "pv"):  # q.K^T and p.V of 12 heads of 64 (kernels.py's cases)
        shapes = [(12, 128, 64), (12, 64, 128)] if case == "attention" else [(12, 128, 128), (12, 128, 32)]
        pair = zip("AB", shapes, strict=True)
        return "MatMul", {name: rng.standard_normal(s).astype(np.float32) for name, s in pair}
    if case == "wide":
        a = wide()
        return "MatMul", {"A": a, "B": a.T.copy()}
    if case == "wide-zeros":
        a, b = wide(), wide()
        b[rng.random(b.shape) < 0.1] = 0
        return "MatMul", {"A": np.maximum(a, 0), "B": b}
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    b[rng.random(b.shape) < 0.001] = np.finfo(np.float32).min
    return "MatMul", {"A": np.maximum(rng.standard_normal((1024, 1024)), 0).astype(np.float32), "B": b}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("libraries", nargs="+", type=Path)
    cases = ["mul", "wide", "wide-zeros", "overflow-zeros", "attention", "pv"]
    parser.add_argument("--case", choices=cases, default="mul")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds of 10 runs per session")
    args = parser.parse_args()
    op, feeds = operands(args.case, np.random.default_rng(0))
    shapes = [x.shape for x in feeds.values()]
    sessions = {"onnxruntime": session(model(op, "", shapes), args.threads, None)}
    for i, library in enumerate(args.libraries):
        sessions[f"{i}: {library}"] = session(
            model(f"LMul{op}" if op == "MatMul" else "LMul", "lmul", shapes), args.threads, library
        )
    results = [s.run(None, feeds)[0] for name, s in sessions.items() if name != "onnxruntime"]
    for other in results[1:]:
        assert np.array_equal(other.view(np.uint32), results[0].view(np.uint32)), "the builds differ"
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            for _ in range(10):
                start = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    print(
        f"CPU: {cpu_name()}; onnxruntime {ort.__version__}; case {args.case}; "
        f"{args.threads} thread(s); load {load:.1f}"
    )
    fastest, median = min(times["onnxruntime"]), statistics.median(times["onnxruntime"])
    for name, runs in times.items():
        print(
            f"{name}: fastest {1e3 * min(runs):.3f} ms (ratio {fastest / min(runs):.2f}), "
            f"median {1e3 * statistics.median(runs):.3f} ms (ratio {median / statistics.median(runs):.2f})"
        )


if __name__ == "__main__":
    main()
