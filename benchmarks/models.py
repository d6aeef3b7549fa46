"""Whole-model speed: an ONNX model against its L-Mul conversion, side by side in one process.

    python benchmarks/models.py [--model models/build/smollm2.onnx] [--ops MatMul,Gemm]
                                [--mantissa-bits 4] [--threads 1,2] [--tokens 128] [--decode 64]
                                [--prompt 16] [--rounds 3] [--profile DIR] [--cpu-time] [--folded]
                                [--json out.json]

Two measurements per thread count, each original and converted interleaved over --rounds
rounds, the fastest round kept (on a shared machine load only ever adds time):

- forward: one run over --tokens tokens (symbolic dimensions: batch 1, every other 128
  unless --tokens says otherwise); the ratio is original time / converted time;
- decode (a model whose only input is ``input_ids``, a causal language model): --decode
  greedy tokens after a --prompt-token prompt, in tokens/s. Without KV-cache inputs (the
  exported SmolLM2 has none) every step re-runs the whole, growing sequence: the figure
  is for that loop, not for a decoder with a cache. Each step's length is the same for
  both models whichever tokens they pick; the script says how many tokens agree.

--folded also times the conversion made with ``fold_pads=True`` (convert --fold-pad: zero
``Pad`` nodes folded into the LMulConv nodes they feed) as a third side, "folded", in the
same rounds.

--profile DIR turns on onnxruntime's profiler (SessionOptions.enable_profiling) for one
extra forward run of each side and prints where the time went per op type, so that what
is not a product (casts, transposes, packing) shows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import lmul_onnx
from lmul_onnx.runtime import cpu_name


def session_options(threads: int, profile: Path | None = None) -> ort.SessionOptions:
    """One intra-op pool of `threads` threads, no spinning (as benchmarks/kernels.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return options


def feeds_for(session: ort.InferenceSession, tokens: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for every model input: symbolic dimensions are 1 for a batch, else `tokens`;
    integer inputs get token ids (all ones for an attention mask), float inputs N(0, 1)."""
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if "batch" in str(d) else tokens) for d in arg.shape]
        if "mask" in arg.name:
            feeds[arg.name] = np.ones(shape, np.int64)
        elif "int" in arg.type:
            feeds[arg.name] = rng.integers(1000, 3000, shape).astype(np.int64)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def fastest(run: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of `repeat` timed runs (after one untimed warm-up run), in seconds."""
    run()
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def greedy_decode(session: ort.InferenceSession, prompt: np.ndarray, steps: int) -> list[int]:
    """`steps` greedy tokens, each from a run over the whole sequence so far (no KV cache)."""
    ids = prompt.copy()
    chosen = []
    for _ in range(steps):
        logits = session.run(None, {"input_ids": ids})[0]
        token = int(np.argmax(logits[0, -1]))
        chosen.append(token)
        ids = np.concatenate([ids, np.array([[token]], np.int64)], axis=1)
    return chosen


def profile_breakdown(
    session: ort.InferenceSession, run: Callable[[], object], repeat: int, top: int = 8
) -> dict[str, float]:
    """Milliseconds per op type per run (onnxruntime's profiler), the mean over `repeat`
    runs after the first (warm-up) one, largest first."""
    for _ in range(repeat + 1):
        run()
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warm_up_end = runs[0][1] if runs else 0
    per_op: Counter[str] = Counter()
    for event in events:
        is_node = event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
        if is_node and event["ts"] >= warm_up_end:
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1e3 / repeat
    return dict(per_op.most_common(top))


def time_decoding(
    sides: dict[str, ort.InferenceSession],
    prompt: np.ndarray,
    steps: int,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Greedy decoding with each side, interleaved over `rounds`; the fastest round of each."""
    seconds = {name: float("inf") for name in sides}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, side in sides.items():
            start = clock()
            tokens[name] = greedy_decode(side, prompt, steps)
            seconds[name] = min(seconds[name], clock() - start)
    same = sum(a == b for a, b in zip(tokens["original"], tokens["converted"], strict=True))
    return {
        "decode_tokens": steps,
        "decode_prompt": prompt.shape[1],
        "decode_original_tokens_per_s": steps / seconds["original"],
        "decode_converted_tokens_per_s": steps / seconds["converted"],
        "decode_ratio": seconds["original"] / seconds["converted"],
        "decode_same_tokens": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/build/smollm2.onnx"))
    parser.add_argument("--ops", default="MatMul,Gemm", help="op types to convert (comma-separated)")
    parser.add_argument("--mantissa-bits", type=int, default=4)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, default=128, help="sequence length of the forward pass")
    parser.add_argument("--repeat", type=int, default=3, help="forward runs per round")
    parser.add_argument("--decode", type=int, default=64, help="greedy tokens (0: no decoding loop)")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens before decoding")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", type=Path, help="directory for onnxruntime's profiles (--repeat forward runs)"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this process's CPU time instead of wall time (for a loaded machine, 1 thread)",
    )
    parser.add_argument(
        "--folded", action="store_true", help="also time the conversion with Pad folding (--fold-pad)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if not args.model.is_file():
        parser.exit(2, f"error: no model at {args.model} (python models/export.py creates models/build/)\n")

    original = onnx.load(args.model).SerializeToString()
    started = time.perf_counter()
    models = {"original": original}
    for name, fold_pads in [("converted", False)] + ([("folded", True)] if args.folded else []):
        try:
            converted = lmul_onnx.convert(
                str(args.model),
                op_types_to_quantize=args.ops.split(","),
                mantissa_bits=args.mantissa_bits,
                fold_pads=fold_pads,
            )
        except ValueError as error:  # an unknown op type, mantissa bits out of range
            parser.exit(2, f"error: {error}\n")
        # Weights that stay in the original's external data file are read in from there.
        onnx.external_data_helper.load_external_data_for_model(converted, str(args.model.parent))
        converted_nodes = sum(1 for n in converted.graph.node if n.domain == lmul_onnx.DOMAIN)
        models[name] = converted.SerializeToString()
        del converted
    load = os.getloadavg()[0]
    print(
        f"CPU: {cpu_name()}; onnxruntime {ort.__version__}; load {load:.1f}; {args.model.name}: "
        f"{converted_nodes} nodes of {args.ops} converted at m = {args.mantissa_bits} "
        f"({time.perf_counter() - started:.0f} s); {'CPU' if args.cpu_time else 'wall'} time",
        flush=True,
    )
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        sides = {
            name: lmul_onnx.InferenceSession(
                data, session_options(threads, args.profile / f"{name}-{threads}t" if args.profile else None)
            )
            for name, data in models.items()
        }
        rng = np.random.default_rng(0)
        feeds = feeds_for(sides["original"], args.tokens, rng)
        if args.profile:
            for name, side in sides.items():
                breakdown = profile_breakdown(side, partial(side.run, None, feeds), args.repeat)
                text = ", ".join(f"{op} {ms:.1f}" for op, ms in breakdown.items())
                print(f"  profile {name:>9} {threads}t (ms per op type): {text}", flush=True)
        forward = {name: float("inf") for name in sides}
        for _ in range(args.rounds):
            for name, side in sides.items():
                forward[name] = min(
                    forward[name], fastest(partial(side.run, None, feeds), args.repeat, clock)
                )
        row = {
            "threads": threads,
            "forward_tokens": args.tokens,
            "forward_original_ms": 1e3 * forward["original"],
            "forward_converted_ms": 1e3 * forward["converted"],
            "forward_ratio": forward["original"] / forward["converted"],
        }
        if "folded" in forward:
            row["forward_folded_ms"] = 1e3 * forward["folded"]
            row["forward_folded_ratio"] = forward["original"] / forward["folded"]
        print(
            f"forward {args.tokens} tokens, {threads} thread(s): "
            f"original {row['forward_original_ms']:.1f} ms, converted {row['forward_converted_ms']:.1f} ms, "
            f"ratio {row['forward_ratio']:.2f}"
            + (
                f"; folded (--fold-pad) {row['forward_folded_ms']:.1f} ms, "
                f"ratio {row['forward_folded_ratio']:.2f}"
                if "folded" in forward
                else ""
            ),
            flush=True,
        )
        names = {i.name for i in sides["original"].get_inputs()}
        if args.decode and names == {"input_ids"}:
            prompt = rng.integers(1000, 3000, (1, args.prompt)).astype(np.int64)
            pair = {name: sides[name] for name in ("original", "converted")}
            row.update(time_decoding(pair, prompt, args.decode, args.rounds, clock))
            print(
                f"decode {args.decode} greedy tokens after {args.prompt} (no KV cache: each step re-runs "
                f"the sequence), {threads} thread(s): "
                f"original {row['decode_original_tokens_per_s']:.2f} tokens/s, "
                f"converted {row['decode_converted_tokens_per_s']:.2f} tokens/s, "
                f"ratio {row['decode_ratio']:.2f} "
                f"({row['decode_same_tokens']}/{args.decode} tokens the same)",
                flush=True,
            )
        results.append(row)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu_name(),
                    "onnxruntime": ort.__version__,
                    "model": args.model.name,
                    "ops": args.ops,
                    "mantissa_bits": args.mantissa_bits,
                    "clock": "CPU time" if args.cpu_time else "wall time",
                    "load_before": load,
                    "load_after": os.getloadavg()[0],
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
