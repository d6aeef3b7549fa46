"""A real pretrained model end to end: paraphrase-MiniLM-L3-v2, shipped as ONNX in a package."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import lmul_onnx
from lmul_onnx import zoo


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    source = zoo.path("paraphrase-minilm-l3")
    converted = tmp_path_factory.mktemp("minilm") / "minilm.lmul.onnx"
    lmul_onnx.convert(source, converted)
    return source, converted


def test_conversion_covers_every_float_product(minilm: tuple[Path, Path]) -> None:
    _source, converted = minilm
    model = onnx.load(converted)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LMulMatMul") == 24 and "MatMul" not in ops
    # 2 Mul nodes compute int64 shapes; 3 (GELU's product by 0.5) multiply by an exact power of two
    assert ops.count("LMul") == 5 and ops.count("Mul") == 5
    onnx.checker.check_model(model)


def test_embeddings_stay_close(minilm: tuple[Path, Path]) -> None:
    source, converted = minilm
    ranges = {"input_ids": (1000, 3000)}
    report = lmul_onnx.validate(
        source,
        converted,
        samples=2,
        seed=3,
        dims={"sequence_length": 12},
        input_ranges=ranges,
        atol=1.0,
        rtol=1.0,
        compare=["fp8-e5m2"],
    )
    # Measured: cosine ~0.995 and SNR ~19 dB for the token embeddings; the bounds below
    # leave room for other onnxruntime versions but catch a broken kernel or graph.
    embeddings = max(report.outputs.values(), key=lambda m: m["max_abs"])
    assert 0.98 < embeddings["cosine"] < 0.99999
    assert 12 < embeddings["snr_db"] < 40
    e5m2 = max(report.baselines["fp8-e5m2"].values(), key=lambda m: m["max_abs"])
    assert e5m2["snr_db"] < embeddings["snr_db"], "L-Mul (m=23) should beat fp8 e5m2 operand rounding"


def test_packaged_model_lookup_errors() -> None:
    with pytest.raises(KeyError):
        zoo.path("no-such-model")
