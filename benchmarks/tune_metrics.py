"""Task metrics for ``lmul-onnx tune --metric benchmarks/tune_metrics.py:NAME``.

Each is called as ``f(original, converted, inputs)``: lists with one ``{name: array}`` dict
per input sample (the original model's outputs, the converted model's outputs, the
inputs), and returns a loss that ``--max-loss`` bounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIGITS = ROOT / "models" / "mnist" / "mnist-digits.npz"


def _only(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values()))


def mnist_accuracy_drop(original: list[dict], converted: list[dict], inputs: list[dict]) -> float:
    """Top-1 accuracy lost on the labelled MNIST digits (0 or less: top-1 unchanged)."""
    labels = np.load(MNIST_DIGITS)["label"]
    accuracy = [
        float(np.mean(np.concatenate([_only(o).argmax(-1) for o in outs]) == labels))
        for outs in (original, converted)
    ]
    return accuracy[0] - accuracy[1]


def top1_disagreement(original: list[dict], converted: list[dict], inputs: list[dict]) -> float:
    """The fraction of inputs whose top-1 class differs from the original's."""
    before = np.concatenate([_only(o).argmax(-1).reshape(-1) for o in original])
    after = np.concatenate([_only(c).argmax(-1).reshape(-1) for c in converted])
    return float(np.mean(before != after))


def _perplexity(logits: list[np.ndarray], ids: list[np.ndarray]) -> float:
    nll, count = 0.0, 0
    for scores, tokens in zip(logits, ids, strict=True):
        scores = scores.reshape(-1, scores.shape[-1])[:-1].astype(np.float64)
        targets = tokens.reshape(-1)[1:]
        top = scores.max(1, keepdims=True)
        log_z = np.log(np.exp(scores - top).sum(1)) + top[:, 0]
        nll += float(np.sum(log_z - scores[np.arange(len(targets)), targets]))
        count += len(targets)
    return float(np.exp(nll / count))


def perplexity_increase(original: list[dict], converted: list[dict], inputs: list[dict]) -> float:
    """Relative perplexity increase of a causal LM on its own input text (0.05 = +5 %)."""
    ids = [feeds["input_ids"] for feeds in inputs]
    before = _perplexity([o["logits"] for o in original], ids)
    after = _perplexity([c["logits"] for c in converted], ids)
    return after / before - 1.0 if np.isfinite(after) else float("inf")
