"""Benchmark of ``lmul-onnx tune``: energy saved within a quality budget on real models.

For each model: run ``lmul-onnx tune`` (the command is printed and recorded), then verify
the written model independently: a fresh ``lmul-onnx validate`` run on the same data, and,
for task-metric budgets, the metric recomputed from fresh onnxruntime sessions of the
original and the written model.

    python models/export.py mnist efficientnet minilm-l6 smollm2 piper   # -> models/build/
    python benchmarks/tune.py [--models 'minilm-l3;minilm-l6@m3,4~paper,unbiased'] [--build DIR] [--jobs N]

Writes docs/tune.json (one record per model) and prints a Markdown table; docs/tune.md
discusses the result. Models whose files are missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import lmul_onnx
from lmul_onnx import inputs as model_inputs
from lmul_onnx import zoo
from lmul_onnx.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
METRICS = Path(__file__).resolve().with_name("tune_metrics.py")
CLI = str(Path(sys.executable).with_name("lmul-onnx"))
IDS = ["--input-range", "input_ids=1000:3000"]


def _metrics_module() -> Any:
    spec = importlib.util.spec_from_file_location("tune_metrics", METRICS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smollm2_inputs(build: Path, work: Path, tokens: int) -> Path:
    """The first ``tokens`` tokens of the GPL-3 text, one sample (needs ``tokenizers``)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(build / "smollm2-tokenizer" / "tokenizer.json"))
    ids = tokenizer.encode(Path("/usr/share/common-licenses/GPL-3").read_text()).ids[:tokens]
    path = work / "smollm2-gpl3.npz"
    np.savez(path, input_ids=np.array([ids], dtype=np.int64))
    return path


def only_inputs(source: Path, work: Path, name: str) -> Path:
    """An .npz with only the model input ``input`` of a data file (labels and names dropped)."""
    path = work / f"{name}-inputs.npz"
    with np.load(source) as data:
        np.savez(path, input=data["input"])
    return path


def cases(build: Path, work: Path, tokens: int) -> dict[str, dict[str, Any]]:
    """model name -> {model, data options, budget options, metric for re-verification}."""
    table: dict[str, dict[str, Any]] = {
        "minilm-l3": {
            "model": Path(zoo.path("paraphrase-minilm-l3")),
            "data": ["--dim", "batch_size=1", "--dim", "sequence_length=128", *IDS, "--samples", "4"],
            "budget": ["--min-cosine", "0.99"],
            "validate": ["--min-cosine", "0.99", "--atol", "1e9"],
        },
        "minilm-l6": {
            "model": build / "minilm-l6.onnx",
            "data": ["--dim", "batch=1", "--dim", "sequence=128", *IDS, "--samples", "4"],
            "budget": ["--min-cosine", "0.99"],
            "validate": ["--min-cosine", "0.99", "--atol", "1e9"],
        },
        "mnist": {
            "model": ROOT / "models" / "mnist" / "mnist.onnx",
            "data": lambda: [
                "--inputs",
                str(only_inputs(ROOT / "models/mnist/mnist-digits.npz", work, "mnist")),
            ],
            "budget": ["--metric", f"{METRICS}:mnist_accuracy_drop", "--max-loss", "0"],
            "metric": "mnist_accuracy_drop",
            "validate": ["--atol", "1e9"],
        },
        "efficientnet-lite0": {
            "model": build / "efficientnet.onnx",
            "data": lambda: ["--inputs", str(only_inputs(build / "efficientnet-photos.npz", work, "photos"))],
            "budget": ["--metric", f"{METRICS}:top1_disagreement", "--max-loss", "0"],
            "metric": "top1_disagreement",
            "validate": ["--atol", "1e9"],
        },
        "piper-joe": {
            # Piper VITS voice: fully converted, its duration predictor's spline flow takes
            # the square root of a negative number and the model stops at a Reshape.
            "model": build / "piper.onnx",
            "data": ["--inputs", str(build / "piper-sentences.npz")],
            "budget": ["--min-cosine", "0.99"],
            "validate": ["--min-cosine", "0.99", "--atol", "1e9"],
        },
        "smollm2-135m": {
            "model": build / "smollm2.onnx",
            "data": lambda: ["--inputs", str(smollm2_inputs(build, work, tokens))],
            # MatMul only: its 362 Mul nodes carry 0.14 % of the multiplication energy, and
            # measuring each would double the time on this 2-core machine.
            "budget": ["--metric", f"{METRICS}:perplexity_increase", "--max-loss", "0.05", "--ops", "MatMul"],
            "metric": "perplexity_increase",
            "validate": ["--atol", "1e9"],
        },
    }
    return table


def recorded(command: list[str]) -> str:
    """The command as recorded: paths relative to the repository root."""
    return shlex.join(command).replace(f"{ROOT}/", "")


def recompute_metric(name: str, original: Path, converted: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """The task metric from fresh sessions of the two models (independent of tune's runs)."""
    outputs = []
    for path in (original, converted):
        session = lmul_onnx.InferenceSession(str(path))
        names = [o.name for o in session.get_outputs()]
        outputs.append([dict(zip(names, session.run(names, f), strict=True)) for f in feeds])
    return float(getattr(_metrics_module(), name)(outputs[0], outputs[1], feeds))


def run_case(
    name: str, case: dict[str, Any], work: Path, jobs: int | None, extra: list[str]
) -> dict[str, Any]:
    data = case["data"]() if callable(case["data"]) else case["data"]
    out, plan = work / f"{name}.tuned.onnx", work / f"{name}.plan.json"
    command = [CLI, "tune", str(case["model"]), "-o", str(out), "--plan-out", str(plan)]
    command += [*data, *case["budget"], "--json", "-", "-q", *extra]
    if jobs:
        command += ["--jobs", str(jobs)]
    print("$", shlex.join(command), flush=True)
    start = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name}: tune exited {completed.returncode}: {completed.stderr.strip()[-400:]}")
    report = json.loads(completed.stdout)
    verify = [CLI, "validate", str(case["model"]), str(out), *data, *case["validate"], "--json", "-", "-q"]
    checked = subprocess.run(verify, capture_output=True, text=True)
    validation = json.loads(checked.stdout)
    record: dict[str, Any] = {
        "model": name,
        "command": recorded(command),
        "budget": report["budget"],
        "passed": report["passed"],
        "saved_percent": report["energy"]["saved_percent"],
        "all_lmul_percent": report["energy"]["all_lmul_percent"],
        "converted_nodes": report["energy"]["converted_nodes"],
        "candidate_nodes": report["energy"]["candidate_nodes"],
        "exact_product_nodes": report["energy"]["exact_product_nodes"],
        "evaluations": report["evaluations"],
        "tune_seconds": report["seconds"],
        "wall_seconds": wall,
        "drift_during_tune": report["drift"],
        "validate": {
            "command": recorded(verify),
            "exit": checked.returncode,
            "outputs": {
                k: {m: v.get(m) for m in ("cosine", "snr_db", "max_abs", "top1_agreement") if m in v}
                for k, v in validation["outputs"].items()
            },
        },
    }
    if "metric" in case:
        inputs_path = Path(data[data.index("--inputs") + 1])
        session = lmul_onnx.InferenceSession(str(case["model"]))
        feeds = model_inputs.load_npz(inputs_path, model_inputs.signature(session))
        record["metric"] = case["metric"]
        record["metric_fresh"] = recompute_metric(case["metric"], case["model"], out, feeds)
    print(
        json.dumps({k: record[k] for k in ("model", "saved_percent", "passed", "tune_seconds")}), flush=True
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default="minilm-l3;minilm-l3@m3,4;minilm-l3@m3,4~paper,unbiased;mnist;mnist@m3,4;minilm-l6;"
        "minilm-l6@m3,4;minilm-l6@m3,4~paper,unbiased;efficientnet-lite0;efficientnet-lite0@m3,4;smollm2-135m;piper-joe",
        help="';'-separated; NAME@mW1,W2 also passes --mantissa-bits W1,W2, ~O1,O2 --offsets O1,O2",
    )
    parser.add_argument("--build", type=Path, default=ROOT / "models" / "build")
    parser.add_argument("--jobs", type=int, default=None, help="tune --jobs (default: tune's own)")
    parser.add_argument("--tokens", type=int, default=64, help="SmolLM2: tokens of the GPL-3 text")
    parser.add_argument("--extra", default="", help="more tune options for every model")
    parser.add_argument("--out", type=Path, default=DOCS / "tune.json")
    args = parser.parse_args()
    records = json.loads(args.out.read_text())["models"] if args.out.exists() else []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        table = cases(args.build, work, args.tokens)
        for name in args.models.split(";"):
            rest, _, offsets = name.partition("~")
            base, _, widths = rest.partition("@m")
            case = dict(table[base])
            if widths:
                case["budget"] = [*case["budget"], "--mantissa-bits", widths]
            if offsets:
                case["budget"] = [*case["budget"], "--offsets", offsets]
            if not Path(case["model"]).is_file():
                print(f"skipping {name}: {case['model']} not found (python models/export.py)", flush=True)
                continue
            record = run_case(name, case, work, args.jobs, shlex.split(args.extra))
            if args.out.exists():  # another run may have added records meanwhile
                records = json.loads(args.out.read_text())["models"]
            records = [r for r in records if r["model"] != name] + [record]
            args.out.write_text(
                json.dumps(
                    {"cpu": cpu_name(), "cores": os.cpu_count(), "load": os.getloadavg(), "models": records},
                    indent=2,
                )
                + "\n"
            )
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print("| model | budget | energy saved | every product | nodes | drift (fresh validate) | tune time |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        outputs = r["validate"]["outputs"]
        cosine = min(v["cosine"] for v in outputs.values())
        metric = f", {r['metric']} {r['metric_fresh']:.4g}" if "metric" in r else ""
        print(
            f"| {r['model']} | {r['budget']} | {r['saved_percent']:.1f} % | {r['all_lmul_percent']:.1f} % | "
            f"{r['converted_nodes']}/{r['candidate_nodes']} | cosine {cosine:.4f}{metric} | "
            f"{r['tune_seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
