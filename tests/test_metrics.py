"""Every drift metric against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmul_onnx.metrics import DriftAccumulator, compare, looks_like_logits


def test_metrics_by_hand() -> None:
    o = np.array([1.0, -2.0, 4.0, 0.0], dtype=np.float32)
    c = np.array([1.5, -2.0, 3.0, 0.5], dtype=np.float32)
    m = compare(o, c, atol=0.6, rtol=0.0)
    # errors: 0.5, 0, 1, 0.5
    assert m["max_abs"] == pytest.approx(1.0)
    assert m["mean_abs"] == pytest.approx(2.0 / 4)
    assert m["max_rel"] == pytest.approx(max(0.5 / 1, 0 / 2, 1 / 4))  # o == 0 is left out
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert m["snr_db"] == pytest.approx(10 * math.log10((1 + 4 + 16) / 1.5))
    dot = 1.5 + 4 + 12
    assert m["cosine"] == pytest.approx(dot / (math.sqrt(21) * math.sqrt(2.25 + 4 + 9 + 0.25)))
    assert m["mismatches"] == pytest.approx(1 / 4) and not m["passed"]  # only |4 - 3| > 0.6
    assert compare(o, c, atol=1.0)["passed"]
    assert compare(o, c, atol=0.0, rtol=0.25)["mismatches"] == pytest.approx(2 / 4)  # 0 -> 0.5 and 1 -> 1.5


def test_identical_and_nan() -> None:
    o = np.arange(6, dtype=np.float32)
    same = compare(o, o.copy())
    assert same["snr_db"] == math.inf and same["cosine"] == pytest.approx(1.0) and same["passed"]
    c = o.copy()
    c[2] = np.nan
    bad = compare(o, c, atol=10)
    assert not bad["passed"] and bad["nan_mismatches"] == 1 and math.isnan(bad["cosine"])
    both = o.copy()
    both[1] = np.nan
    assert compare(both, both.copy())["passed"]


def test_top1_and_streaming() -> None:
    o = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
    c = np.array([[0.2, 0.7, 0.1], [0.1, 0.5, 0.4]], dtype=np.float32)
    assert compare(o, c, logits=True)["top1_agreement"] == pytest.approx(0.5)
    # accumulating two samples equals comparing their concatenation
    acc = DriftAccumulator(0.1, 0.1)
    acc.add(o, c, logits=True)
    acc.add(c, o, logits=True)
    joint = compare(np.concatenate([o, c]), np.concatenate([c, o]), atol=0.1, rtol=0.1, logits=True)
    for key, value in acc.result().items():
        assert value == pytest.approx(joint[key]), key


def test_logit_heuristic() -> None:
    assert looks_like_logits("logits", np.zeros((1, 7, 50), np.float32))
    assert looks_like_logits("class_probs", np.zeros((8, 10), np.float16))
    # the rule is the name: a 2-D embedding, an int64 pass-through and one score are not
    assert not looks_like_logits("output", np.zeros((8, 10), np.float32))
    assert not looks_like_logits("sentence_embedding", np.zeros((1, 384), np.float32))
    assert not looks_like_logits("last_hidden_state", np.zeros((1, 7, 384), np.float32))
    assert not looks_like_logits("score", np.zeros((4, 1), np.float32))
    assert not looks_like_logits("logits_shape", np.zeros((3,), np.int64))
