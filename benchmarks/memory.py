"""Resident memory of a model before and after conversion to L-Mul ops.

Builds a synthetic decoder-like stack of ``--layers`` MatMuls against constant
``--size`` x ``--size`` float32 weights (or uses ``--model``), converts it, and runs each
model once in a fresh process: the figure is the resident set size after the first run
(after glibc's malloc_trim, so that heap memory the session has already freed does not
count), minus that of the same process before the session was created (onnxruntime and
numpy already imported). Weights of the converted model are packed by the lmul kernels
when the session is created (16 bits per weight at m <= 7, else 32), next to
onnxruntime's own copy of the initializers; that copy leaves resident memory only when
onnxruntime memory-maps it from an external-data file (``--external-data both`` stores
the weights of both models that way, ``converted`` those of the converted one, as
``lmul-onnx convert --external-data`` does; models with external data keep it).

    python benchmarks/memory.py [--layers 8] [--size 2048] [--mantissa-bits 4] [--model m.onnx]
                                [--external-data none|both|converted]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lmul_onnx

# Run in a child process: prints the resident memory the session added, in bytes.
CHILD = """
import sys
import numpy as np
import onnxruntime
import lmul_onnx

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

before = resident()
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
session = lmul_onnx.InferenceSession(sys.argv[1], options)
feeds = {}
for arg in session.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in arg.shape]
    feeds[arg.name] = (np.ones(shape, np.int64) if "int" in arg.type
                       else np.random.default_rng(0).standard_normal(shape).astype(np.float32))
session.run(None, feeds)
try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):
    pass
print(resident() - before)
"""


def synthetic_model(layers: int, size: int) -> onnx.ModelProto:
    """``layers`` MatMuls in a chain, each against its own constant size x size weight."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    for i in range(layers):
        weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [f"X{i}", f"W{i}"], [f"X{i + 1}"], name=f"matmul{i}"))
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("X0", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info(f"X{layers}", TensorProto.FLOAT, [1, size])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def resident_after_first_run(path: Path) -> int:
    """Bytes of resident memory a session of ``path`` adds, after one run."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True
    )
    return int(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mantissa-bits", type=int, default=None)
    parser.add_argument("--model", type=Path, help="an ONNX model instead of the synthetic stack")
    parser.add_argument("--ops", default="MatMul,Gemm", help="op types to convert (default MatMul,Gemm)")
    parser.add_argument(
        "--external-data",
        choices=["none", "both", "converted"],
        default="none",
        help="store the weights in an external-data file (onnxruntime memory-maps it): of both models, "
        "or of the converted one only (convert --external-data); default: as the model has them",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original.onnx"
        converted = Path(tmp) / "converted.onnx"
        both = args.external_data == "both"
        if args.model and not both:
            original = args.model
        else:
            source = onnx.load(args.model) if args.model else synthetic_model(args.layers, args.size)
            onnx.save(source, original, save_as_external_data=both, location="original.onnx.data")
        lmul_onnx.convert(
            str(original),
            converted,
            mantissa_bits=args.mantissa_bits,
            op_types_to_quantize=args.ops.split(","),
            external_data=args.external_data == "converted",
        )

        def storage(path: Path) -> str:
            stored = onnx.load(path, load_external_data=False).graph.initializer
            return (
                "external data"
                if any(t.data_location == TensorProto.EXTERNAL for t in stored)
                else "embedded"
            )

        initializers = onnx.load(original, load_external_data=True).graph.initializer
        weights = sum(numpy_helper.to_array(t).nbytes for t in initializers)
        name = args.model.name if args.model else f"{args.layers} x MatMul {args.size}x{args.size}"
        base = resident_after_first_run(original)
        lmul = resident_after_first_run(converted)
        print(
            f"model: {name}; initializers {weights / 2**20:.1f} MiB ({storage(original)}, converted: "
            f"{storage(converted)}); "
            f"ops {args.ops}; m = {args.mantissa_bits or 'full'}"
        )
        print(f"onnxruntime: {base / 2**20:.1f} MiB resident after the first run")
        print(f"L-Mul:       {lmul / 2**20:.1f} MiB resident after the first run ({lmul / base:.2f}x)")


if __name__ == "__main__":
    main()
