"""What a portable model costs: paraphrase-MiniLM-L3 converted at m = 4, run by onnxruntime
without the library (the portable bodies), against the same model with the library and
against the original model, side by side in one process; peak memory per variant in a
fresh process each.

    python benchmarks/portable.py [--tokens 16,64] [--repeats 3]

Prints the CPU, the load, per sequence length the median time of each variant and its
ratio to the original model, and the peak resident memory. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lmul_onnx
from lmul_onnx import zoo
from lmul_onnx.runtime import cpu_name


def feeds(tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 3000, (1, tokens)).astype(np.int64),
        "attention_mask": np.ones((1, tokens), np.int64),
    }


def session(path: Path, library: bool) -> ort.InferenceSession:
    if library:
        return lmul_onnx.InferenceSession(path)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def median_seconds(sess: ort.InferenceSession, inputs: dict[str, np.ndarray], repeats: int) -> float:
    sess.run(None, inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(path: Path, library: bool, tokens: int) -> float:
    """Peak RSS of a fresh process (this script, --memory) that creates the session and runs once."""
    command = [sys.executable, __file__, "--memory", str(path), str(int(library)), str(tokens)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def measure_memory(path: str, library: str, tokens: str) -> None:
    session(Path(path), library == "1").run(None, feeds(int(tokens)))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork/exec.
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024)


def main() -> None:
    if sys.argv[1:2] == ["--memory"]:
        measure_memory(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="16,64", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = cpu_name()
    load = os.getloadavg()[0]
    print(f"CPU: {cpu}; load average {load:.2f} on {os.cpu_count()} CPUs; onnxruntime {ort.__version__}")
    source = zoo.path("paraphrase-minilm-l3")
    with tempfile.TemporaryDirectory() as folder:
        library_model, portable_model = Path(folder, "library.onnx"), Path(folder, "portable.onnx")
        lmul_onnx.convert(source, library_model, mantissa_bits=4)
        lmul_onnx.convert(source, portable_model, mantissa_bits=4, portable=True)
        variants = {
            "original (plain onnxruntime)": (source, False),
            "converted, library": (library_model, True),
            "converted, portable (no library)": (portable_model, False),
        }
        for tokens in (int(t) for t in args.tokens.split(",")):
            inputs = feeds(tokens)
            base = None
            print(f"\n{tokens} tokens, batch 1")
            for name, (path, library) in variants.items():
                seconds = median_seconds(session(path, library), inputs, args.repeats)
                base = base or seconds
                memory = peak_memory_mb(path, library, tokens)
                print(
                    f"  {name:<34} {seconds * 1e3:9.1f} ms  {seconds / base:8.1f}x  peak RSS {memory:6.0f} MB"
                )


if __name__ == "__main__":
    main()
