"""Kernel speed: the lmul ops against onnxruntime's own MatMul / Gemm / Mul / Conv / ConvTranspose.

Every figure is a ratio native time / L-Mul time (higher is better, 1.0 = as fast as the
float op), measured side by side in this process on the same shapes, data and thread
count: the best of 3 interleaved rounds, each the median (or, with --statistic min, the
fastest) of --repeat runs (40 times as many for runs under a millisecond). On a shared,
loaded machine the fastest run is the steadier figure: load only ever adds time. Thread
spinning is disabled in both runtimes, so that two threads on a small machine do not
steal each other's core.

    python benchmarks/kernels.py [--threads 1,2] [--repeat 7] [--statistic min] [--quick] [--only TEXT]
                                 [--cpu-time] [--model MODEL] [--json out.json]

Thread scaling (on a many-core machine): ``--threads 1,2,4,8,all`` and the closing table
gives, per case, each side's speed-up over its own time on the first thread count, and
L-Mul's speed-up divided by onnxruntime's (1.0 = L-Mul scales exactly as well).

``--model`` times one forward run of a whole model; benchmarks/models.py does more
(conversion options, greedy decoding, onnxruntime's profile).

``--only Conv`` runs the Conv / ConvTranspose cases (``--only 'attention|decoding'``: either);
``--cpu-time`` times with the CPU time of this process instead of wall time (on a loaded
machine, with 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx
from lmul_onnx.runtime import cpu_name
from models import feeds_for, session_options  # benchmarks/models.py


def model(
    op: str,
    domain: str,
    shapes: list[tuple[int, ...]],
    constant_b: np.ndarray | None = None,
    element_type: int = TensorProto.FLOAT,
    **attrs: object,
) -> bytes:
    names = ["A", "B", "C"][: len(shapes)]
    inputs = [
        helper.make_tensor_value_info(n, element_type, list(s)) for n, s in zip(names, shapes, strict=True)
    ]
    initializers = []
    if constant_b is not None:
        inputs = [i for i in inputs if i.name != "B"]
        initializers = [numpy_helper.from_array(constant_b, "B")]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["Y"], domain=domain, **attrs)],
        "bench",
        inputs,
        [helper.make_tensor_value_info("Y", element_type, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("lmul", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def session(data: bytes | str, threads: int) -> ort.InferenceSession:
    return lmul_onnx.InferenceSession(data, session_options(threads))


STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


@dataclass(frozen=True)
class Timing:
    """How each side is timed: `repeat` runs (40 times as many under 1 ms), summarised,
    on `clock` (wall time, or the CPU time of this process, which other processes on a
    shared machine do not inflate)."""

    repeat: int
    statistic: Callable[[list[float]], float]
    clock: Callable[[], float] = time.perf_counter


def typical_time(run: Callable[[], object], timing: Timing) -> float:
    clock = timing.clock
    start = clock()
    run()
    repeat = timing.repeat * (40 if clock() - start < 1e-3 else 1)
    times = []
    for _ in range(repeat):
        start = clock()
        run()
        times.append(clock() - start)
    return timing.statistic(times)


def ratio(native: ort.InferenceSession, lmul: ort.InferenceSession, feeds: dict, timing: Timing) -> dict:
    # Interleave the two so that clock or load drift hits both alike.
    t_native, t_lmul = [], []
    for _ in range(3):
        t_native.append(typical_time(lambda: native.run(None, feeds), timing))
        t_lmul.append(typical_time(lambda: lmul.run(None, feeds), timing))
    n, m = min(t_native), min(t_lmul)
    return {"native_ms": 1e3 * n, "lmul_ms": 1e3 * m, "ratio": n / m}


def matmul_case(
    a: np.ndarray,
    b: np.ndarray,
    threads: int,
    timing: Timing,
    constant: bool,
    mantissa_bits: int | None = None,
) -> dict:
    """onnxruntime's MatMul against LMulMatMul (at ``mantissa_bits``, default full width), in
    the operands' type (float32 or float16)."""
    shapes = [a.shape, b.shape]
    feeds = {"A": a} if constant else {"A": a, "B": b}
    const = b if constant else None
    attrs = {} if mantissa_bits is None else {"mantissa_bits": mantissa_bits}
    element = TensorProto.FLOAT16 if a.dtype == np.float16 else TensorProto.FLOAT
    return ratio(
        session(model("MatMul", "", shapes, const, element), threads),
        session(model("LMulMatMul", "lmul", shapes, const, element, **attrs), threads),
        feeds,
        timing,
    )


# (name, op, X shape, W shape, attributes): a dense 3x3 Conv, EfficientNet-Lite0's pointwise
# and depthwise shapes, a speech front-end's 1-D Conv (Whisper's first layer), upsamplers.
CONV_CASES: list[tuple[str, str, tuple[int, ...], tuple[int, ...], dict]] = [
    ("Conv 3x3 1x64x56x56 -> 64, pads 1", "Conv", (1, 64, 56, 56), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("Conv 1x1 1x24x56x56 -> 144 (EffNet expand)", "Conv", (1, 24, 56, 56), (144, 24, 1, 1), {}),
    ("Conv 1x1 1x192x14x14 -> 1152 (EffNet)", "Conv", (1, 192, 14, 14), (1152, 192, 1, 1), {}),
    (
        "Conv depthwise 3x3 1x144x56x56 (EffNet)",
        "Conv",
        (1, 144, 56, 56),
        (144, 1, 3, 3),
        {"group": 144, "pads": [1, 1, 1, 1]},
    ),
    (
        "Conv depthwise 3x3 s2 1x96x112x112 (EffNet)",
        "Conv",
        (1, 96, 112, 112),
        (96, 1, 3, 3),
        {"group": 96, "pads": [0, 0, 1, 1], "strides": [2, 2]},
    ),
    ("Conv1d 1x80x3000 -> 384, k3 (speech)", "Conv", (1, 80, 3000), (384, 80, 3), {"pads": [1, 1]}),
    (
        "ConvTranspose1d 1x512x100 -> 256, k16 s8",
        "ConvTranspose",
        (1, 512, 100),
        (512, 256, 16),
        {"strides": [8], "pads": [4, 4]},
    ),
    (
        "ConvTranspose 4x4 s2 1x64x56x56 -> 32",
        "ConvTranspose",
        (1, 64, 56, 56),
        (64, 32, 4, 4),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
]


def conv_case(
    op: str,
    x_shape: tuple,
    w_shape: tuple,
    attrs: dict,
    threads: int,
    timing: Timing,
    rng: np.random.Generator,
    tiny: bool = False,
    dtype: type = np.float32,
) -> dict:
    """Standard op against its lmul op; weights are initializers, X and the bias inputs.
    tiny: one X value is 1e-36, so that some products underflow (the clamped kernels);
    dtype: float32 or float16 tensors."""
    x = rng.standard_normal(x_shape).astype(np.float32)
    if tiny:
        x.flat[x.size // 3] = 1e-36
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    channels = w_shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else w_shape[0]
    bias = rng.standard_normal(channels).astype(dtype)
    x = x.astype(dtype)
    shapes = [x_shape, w_shape, bias.shape]
    element = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    return ratio(
        session(model(op, "", shapes, w, element, **attrs), threads),
        session(model(f"LMul{op}", "lmul", shapes, w, element, **attrs), threads),
        {"A": x, "C": bias},
        timing,
    )


def available_cpus() -> int:
    """The CPUs this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_scaling(results: list[dict]) -> list[dict]:
    """Per case and thread count, each side's speed-up over its time at the case's first
    thread count, and L-Mul's speed-up relative to onnxruntime's."""
    first: dict[str, dict] = {}
    rows = []
    for result in results:
        base = first.setdefault(result["case"], result)
        native = base["native_ms"] / result["native_ms"]
        lmul = base["lmul_ms"] / result["lmul_ms"]
        rows.append(
            {
                "case": result["case"],
                "threads": result["threads"],
                "from_threads": base["threads"],
                "native_speedup": native,
                "lmul_speedup": lmul,
                "relative": lmul / native,
            }
        )
    return rows


def print_scaling(rows: list[dict]) -> None:
    print("\nThread scaling: speed-up over each side's own time at the first thread count")
    print(f"{'case':<46} {'th':>3}  {'native':>7}  {'L-Mul':>7}  L-Mul/native")
    order = {case: i for i, case in reversed(list(enumerate(row["case"] for row in rows)))}
    for row in sorted(rows, key=lambda r: order[r["case"]]):  # stable: thread order kept
        if row["threads"] != row["from_threads"]:
            print(
                f"{row['case']:<46} {row['threads']:>3}  {row['native_speedup']:>6.2f}x  "
                f"{row['lmul_speedup']:>6.2f}x  {row['relative']:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2,4,all (all: every CPU)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per side and round (40 times as many under 1 ms)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller shapes, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write every result (and the scaling) to this file")
    parser.add_argument(
        "--model",
        type=Path,
        help="also time this ONNX model, original against converted (whatever --only says)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="run only the cases whose name contains this text; 'A|B' (split on '|', not a regex): either",
    )
    parser.add_argument(
        "--statistic",
        choices=sorted(STATISTICS),
        default="median",
        help="summary of a side's runs: median, or min (the steadier figure on a loaded machine)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this process's CPU time instead of wall time (for a loaded machine)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = 256 if args.quick else 1024
    results = []

    def report(name: str, threads: int, result: dict) -> None:
        results.append({"case": name, "threads": threads, **result})
        print(
            f"{name:<46} {threads:>2}  {result['native_ms']:>9.3f} ms  {result['lmul_ms']:>9.3f} ms  "
            f"ratio {result['ratio']:.2f}",
            flush=True,
        )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"CPU: {cpu_name()}; onnxruntime {ort.__version__}; lmul-onnx {lmul_onnx.__version__}; "
        f"load {load:.1f}; {args.statistic} of runs; {'CPU time' if args.cpu_time else 'wall time'}"
    )
    print(f"{'case':<46} {'th':>2}  {'native':>12}  {'L-Mul':>12}  native/L-Mul")
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    timing = Timing(
        args.repeat, STATISTICS[args.statistic], time.process_time if args.cpu_time else time.perf_counter
    )

    def product(
        a_shape: tuple[int, ...], b_shape: tuple[int, ...], constant: bool, mantissa_bits: int | None = None
    ) -> Callable[[int], dict]:
        return lambda threads: matmul_case(
            normal(*a_shape), normal(*b_shape), threads, timing, constant, mantissa_bits
        )

    def half_product(
        a_shape: tuple[int, ...], b_shape: tuple[int, ...], constant: bool
    ) -> Callable[[int], dict]:
        # float16 operands and output, against onnxruntime's float16 MatMul
        return lambda threads: matmul_case(
            normal(*a_shape).astype(np.float16),
            normal(*b_shape).astype(np.float16),
            threads,
            timing,
            constant,
        )

    def peaked_softmax_pv(threads: int) -> dict:
        # decoding's p.V with sharp attention: probabilities down to e^-87 and below (zeros,
        # subnormals) against V, so some products underflow (the small-M clamped pass)
        logits = normal(heads, 1, context) * 12
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p = (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
        return matmul_case(p, normal(heads, context, 64), threads, timing, False)

    def tiny_activation_product(threads: int) -> dict:
        # one activation of 1e-36 against weights at m = 4 (16-bit panels): some products
        # underflow, so the call takes the clamped tiles
        a = normal(1, big // 2)
        a[0, 7] = 1e-36
        return matmul_case(a, normal(big // 2, big // 2) * 0.02, threads, timing, True, 4)

    def relu_product(threads: int) -> dict:
        return matmul_case(np.maximum(normal(size, size), 0), normal(size, size), threads, timing, True)

    def wide(rows: int, cols: int) -> np.ndarray:
        """Magnitudes e^-80..e^80 with random signs: products underflow and overflow."""
        signs = rng.choice([-1, 1], (rows, cols))
        return (np.exp(rng.uniform(-80, 80, (rows, cols))) * signs).astype(np.float32)

    def wide_product(threads: int) -> dict:
        a = wide(size, size)
        return matmul_case(a, a.T.copy(), threads, timing, False)

    def wide_zeros_product(threads: int) -> dict:
        # half of A zero (ReLU), a tenth of B zero, products under- and overflow
        a, b = wide(size, size), wide(size, size)
        b[rng.random(b.shape) < 0.1] = 0
        return matmul_case(np.maximum(a, 0), b, threads, timing, False)

    def overflow_zeros_product(threads: int) -> dict:
        # zeros together with possible overflow: ReLU activations (half zero) against a B
        # with a few float32-min entries (as in masks filled with finfo(float32).min)
        b = normal(size, size)
        b[rng.random(b.shape) < 0.001] = np.finfo(np.float32).min
        return matmul_case(np.maximum(normal(size, size), 0), b, threads, timing, False)

    def quantised_weights(rows: int, k: int, n: int) -> Callable[[int], dict]:
        """SmolLM2's weight shapes and share of exact zeros (its Q4_1 checkpoint: about 0.03%
        of the entries, in 1-4% of the 64-wide panel rows), at m = 4 (16-bit panels)."""

        def run(threads: int) -> dict:
            b = normal(k, n)
            b[rng.random(b.shape) < 0.0003] = 0
            return matmul_case(normal(rows, k), b, threads, timing, True, 4)

        return run

    def gemm(threads: int) -> dict:
        a, b = normal(size, size), normal(size, size)
        shapes = [a.shape, b.shape]
        return ratio(
            session(model("Gemm", "", shapes, b, transB=1), threads),
            session(model("LMulGemm", "lmul", shapes, b, transB=1), threads),
            {"A": a},
            timing,
        )

    def mul(threads: int, dtype: type = np.float32) -> dict:
        x, y = normal(4 * size * size).astype(dtype), normal(4 * size * size).astype(dtype)
        element = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
        return ratio(
            session(model("Mul", "", [x.shape, y.shape], None, element), threads),
            session(model("LMul", "lmul", [x.shape, y.shape], None, element), threads),
            {"A": x, "B": y},
            timing,
        )

    def whole_model(threads: int) -> dict:
        converted = lmul_onnx.convert(str(args.model))
        reference_session = session(onnx.load(args.model).SerializeToString(), threads)
        feeds = feeds_for(reference_session, 128, rng)
        return ratio(reference_session, session(converted.SerializeToString(), threads), feeds, timing)

    wide_k = 768 * size // 1024
    big = 4 * size
    heads, context = 12, 2 * size
    cases: list[tuple[str, Callable[[int], dict]]] = [
        (f"MatMul {size}^3 N(0,1), B input", product((size, size), (size, size), False)),
        (f"MatMul {size}^3 N(0,1), B weights", product((size, size), (size, size), True)),
        (f"MatMul {size}^3 N(0,1), B weights m=4", product((size, size), (size, size), True, 4)),
        (
            f"MatMul {size}x{wide_k}x{wide_k} N(0,1), B weights",
            product((size, wide_k), (wide_k, wide_k), True),
        ),
        (f"MatMul {size}^3 half of A zero, B weights", relu_product),
        ("MatMul 128x576x1536, B weights m=4, 0.03% zero", quantised_weights(128, 576, 1536)),
        ("MatMul 48x576x1536, B weights m=4, 0.03% zero", quantised_weights(48, 576, 1536)),
        (f"MatMul {size}^3 whole exponent range", wide_product),
        (f"MatMul {size}^3 whole exponent range, zeros", wide_zeros_product),
        (f"MatMul {size}^3 zeros, possible overflow", overflow_zeros_product),
        ("MatMul attention 12x(128x64 @ 64x128)", product((12, 128, 64), (12, 64, 128), False)),
        # Attention's other shapes: p.V with 32-wide heads (MiniLM: narrow panels), SmolLM2's
        # 9 heads, and one step of its decoding loop at 40 tokens.
        ("MatMul attention 12x(128x128 @ 128x32) (p.V)", product((12, 128, 128), (12, 128, 32), False)),
        ("MatMul attention 9x(128x64 @ 64x128)", product((9, 128, 64), (9, 64, 128), False)),
        ("MatMul attention 9x(128x128 @ 128x64) (p.V)", product((9, 128, 128), (9, 128, 64), False)),
        ("MatMul attention 9x(40x64 @ 64x40)", product((9, 40, 64), (9, 64, 40), False)),
        (f"MatMul 1x{big}x{big} (decoding), B weights", product((1, big), (big, big), True)),
        # Weights rounded to m <= 7 bits are packed in 16 bits (bfloat16 bit patterns).
        (f"MatMul 1x{big}x{big} (decoding), B weights m=4", product((1, big), (big, big), True, 4)),
        (
            f"MatMul 1x{big // 2}x{big // 2} (decoding), B weights",
            product((1, big // 2), (big // 2, big // 2), True),
        ),
        (
            f"MatMul 1x{big // 2}x{big // 2} (decoding), B weights m=4",
            product((1, big // 2), (big // 2, big // 2), True, 4),
        ),
        (f"MatMul 1x{big // 2}x{big // 2} (decoding), B weights m=4, one a 1e-36", tiny_activation_product),
        # Decoding against a per-call B (a KV cache): the small-M kernel, B never packed.
        (f"MatMul 1x{big}x{big}, B input", product((1, big), (big, big), False)),
        (f"MatMul 1x64x{context} (q.K^T), B input", product((1, 64), (64, context), False)),
        (f"MatMul 1x{context}x64 (p.V), B input", product((1, context), (context, 64), False)),
        (
            f"MatMul {heads}x(1x64 @ 64x{context}), B input",
            product((heads, 1, 64), (heads, 64, context), False),
        ),
        (
            f"MatMul {heads}x(1x{context} @ {context}x64), B input",
            product((heads, 1, context), (heads, context, 64), False),
        ),
        (f"MatMul {heads}x(1x{context} @ {context}x64), peaked softmax", peaked_softmax_pv),
        (f"MatMul 8x{big}x{big}, B input", product((8, big), (big, big), False)),
        # float16 models: a per-call B widened to float32 on the fly, the sums narrowed back
        (
            f"MatMul fp16 {heads}x(1x{context} @ {context}x64), B input",
            half_product((heads, 1, context), (heads, context, 64), False),
        ),
        ("MatMul fp16 attention 12x(128x64 @ 64x128)", half_product((12, 128, 64), (12, 64, 128), False)),
        ("MatMul fp16 128x384x1536, B weights", half_product((128, 384), (384, 1536), True)),
        (f"Gemm {size}^3 transB, B weights", gemm),
        (f"Mul {4 * size * size / (1 << 20):g}M elements", mul),
        (f"Mul fp16 {4 * size * size / (1 << 20):g}M elements", lambda threads: mul(threads, np.float16)),
    ]
    for name, op, x_shape, w_shape, attrs in CONV_CASES:
        cases.append(
            (name, lambda threads, c=(op, x_shape, w_shape, attrs): conv_case(*c, threads, timing, rng))
        )
    # One value that makes some products underflow: the clamped kernels, not the one-add ones.
    for name, op, x_shape, w_shape, attrs in (CONV_CASES[0], CONV_CASES[-1]):
        case = (op, x_shape, w_shape, attrs)
        tiny_run = lambda threads, c=case: conv_case(*c, threads, timing, rng, tiny=True)  # noqa: E731
        cases.append((f"{name}, one x 1e-36", tiny_run))
    name, op, x_shape, w_shape, attrs = CONV_CASES[0]
    case = (op, x_shape, w_shape, attrs)
    half_run = lambda threads, c=case: conv_case(*c, threads, timing, rng, dtype=np.float16)  # noqa: E731
    cases.append((name.replace("Conv", "Conv fp16", 1), half_run))
    wanted = args.only.split("|")
    thread_counts = [available_cpus() if t == "all" else int(t) for t in args.threads.split(",")]
    for threads in thread_counts:
        for name, run in cases:
            if any(text in name for text in wanted):
                report(name, threads, run(threads))
        if args.model:  # whatever --only says
            report(
                f"model {args.model.name} (symbolic dims: batch 1, others 128)", threads, whole_model(threads)
            )
    scaling = thread_scaling(results)
    if len(thread_counts) > 1:
        print_scaling(scaling)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "onnxruntime": ort.__version__,
                    "statistic": args.statistic,
                    "load_before": load,
                    "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "cpus": available_cpus(),
                    "results": results,
                    "scaling": scaling,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
