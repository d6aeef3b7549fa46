"""Drift metrics between an original and a converted output, computed in float64 chunks.

``DriftAccumulator`` streams over outputs chunk by chunk (and sample by sample), so a
large output (e.g. LLM logits) never needs more than one float64 chunk beside the two
arrays themselves. Definitions, with o the original and c the converted values:

* ``max_abs`` = max |c - o|;  ``mean_abs`` = mean |c - o|
* ``max_rel`` = max |c - o| / |o| over elements with o != 0
* ``rmse`` = sqrt(mean (c - o)^2)
* ``snr_db`` = 10 log10(sum o^2 / sum (c - o)^2)  (inf when identical)
* ``cosine`` = sum c*o / (||c|| ||o||), over the flattened output
* ``top1_agreement`` = fraction of positions whose argmax over the last axis agrees
  (reported for class-score outputs only: named by validate's ``--logits``, else by
  the rule of :func:`looks_like_logits`)
* ``nan_mismatches`` = elements that are NaN in one output only (cosine and SNR are
  then NaN); ``new_nonfinite`` = elements NaN or infinite in the converted output where
  the original is finite
* ``mismatches`` = fraction of elements outside ``atol + rtol * |o|`` (numpy allclose)

An output passes when it has no mismatch (NaN where the original has none counts as
one) and, if ``min_cosine`` is set, its cosine is at least that.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

CHUNK = 1 << 20
_LOGIT_NAME = re.compile(r"logit|prob|score|class", re.IGNORECASE)


def looks_like_logits(name: str, array: np.ndarray) -> bool:
    """The default rule for class scores: a floating-point output with at least two
    values on its last axis whose name contains ``logit``, ``prob``, ``score`` or
    ``class`` (case-insensitive). Embeddings, hidden states and integer outputs are not."""
    return (
        array.dtype.kind == "f"
        and array.ndim >= 1
        and array.shape[-1] >= 2
        and bool(_LOGIT_NAME.search(name))
    )


@dataclass
class DriftAccumulator:
    """Running drift statistics of one output over all samples."""

    atol: float
    rtol: float
    min_cosine: float | None = None
    count: int = 0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_sq_err: float = 0.0
    sum_sq_ref: float = 0.0
    sum_sq_new: float = 0.0
    dot: float = 0.0
    mismatches: int = 0
    nan_mismatches: int = 0
    new_nonfinite: int = 0
    top1_total: int = 0
    top1_agree: int = 0
    logits: bool = False

    def add(self, original: np.ndarray, converted: np.ndarray, *, logits: bool = False) -> None:
        if original.shape != converted.shape:
            raise ValueError(f"output shapes differ: {original.shape} vs {converted.shape}")
        o_flat, c_flat = original.reshape(-1), converted.reshape(-1)
        for start in range(0, o_flat.size, CHUNK):
            self._add_chunk(
                o_flat[start : start + CHUNK].astype(np.float64),
                c_flat[start : start + CHUNK].astype(np.float64),
            )
        if logits and original.ndim >= 1 and original.shape[-1] >= 2:
            self.logits = True
            rows_o = original.reshape(-1, original.shape[-1])
            rows_c = converted.reshape(-1, converted.shape[-1])
            self.top1_total += rows_o.shape[0]
            self.top1_agree += int(np.count_nonzero(rows_o.argmax(-1) == rows_c.argmax(-1)))

    def _add_chunk(self, o: np.ndarray, c: np.ndarray) -> None:
        self.new_nonfinite += int(np.count_nonzero(np.isfinite(o) & ~np.isfinite(c)))
        o_nan, c_nan = np.isnan(o), np.isnan(c)
        self.nan_mismatches += int(np.count_nonzero(o_nan != c_nan))
        both = ~(o_nan | c_nan)
        o, c = o[both], c[both]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            err = np.abs(c - o)
            same_inf = np.isinf(o) & (o == c)
            err[same_inf] = 0.0
            self.count += o.size + int(np.count_nonzero(~both))
            if err.size:
                self.sum_abs += float(err.sum())
                self.max_abs = max(self.max_abs, float(err.max()))
                nonzero = o != 0
                if np.any(nonzero):
                    self.max_rel = max(self.max_rel, float((err[nonzero] / np.abs(o[nonzero])).max()))
                self.sum_sq_err += float(np.square(err).sum())
                self.sum_sq_ref += float(np.square(o).sum())
                self.sum_sq_new += float(np.square(c).sum())
                self.dot += float((o * c).sum())
                self.mismatches += int(np.count_nonzero(~(err <= self.atol + self.rtol * np.abs(o))))

    @property
    def passed(self) -> bool:
        within = self.mismatches == 0 and self.nan_mismatches == 0
        return within and (self.min_cosine is None or self.result_cosine() >= self.min_cosine)

    def result_cosine(self) -> float:
        norms = math.sqrt(self.sum_sq_ref) * math.sqrt(self.sum_sq_new)
        return self.dot / norms if norms > 0 else (1.0 if self.sum_sq_err == 0 else 0.0)

    def result(self) -> dict[str, Any]:
        n = max(self.count, 1)
        if self.sum_sq_err == 0:
            snr = math.inf
        elif self.sum_sq_ref == 0:
            snr = -math.inf
        else:
            snr = 10 * math.log10(self.sum_sq_ref / self.sum_sq_err)
        cosine = self.result_cosine()
        if self.nan_mismatches:  # NaNs where the original has none: no similarity to speak of
            cosine = snr = math.nan
        result: dict[str, Any] = {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / n,
            "max_rel": self.max_rel,
            "rmse": math.sqrt(self.sum_sq_err / n),
            "snr_db": snr,
            "cosine": cosine,
            "mismatches": (self.mismatches + self.nan_mismatches) / n,
            "nan_mismatches": self.nan_mismatches,
            "new_nonfinite": self.new_nonfinite,
            "passed": self.passed,
        }
        if self.logits:
            result["top1_agreement"] = self.top1_agree / max(self.top1_total, 1)
        return result


def compare(
    original: np.ndarray, converted: np.ndarray, *, atol: float = 0.0, rtol: float = 0.0, logits: bool = False
) -> dict[str, Any]:
    """All metrics of one pair of arrays (see the module docstring)."""
    accumulator = DriftAccumulator(atol, rtol)
    accumulator.add(np.asarray(original), np.asarray(converted), logits=logits)
    return accumulator.result()
