"""Shared fixtures: a seeded generator and sessions of one-node ``lmul`` models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import lmul_onnx
import lmul_onnx.runtime
from lmul_onnx.testing import single_op_model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20241001)


def run_single_op(
    op_type: str, inputs: list[np.ndarray | None], threads: int = 1, **attributes: Any
) -> np.ndarray:
    """Run one ``lmul`` node on ``inputs`` (``None`` = omitted optional input)."""
    dtypes = [x.dtype for x in inputs if x is not None]
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    model = single_op_model(
        op_type, dtypes + [dtypes[0]] * (len(names) - len(dtypes)), input_names=names, **attributes
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = lmul_onnx.InferenceSession(model.SerializeToString(), options)
    feeds = {name: x for name, x in zip(names, inputs, strict=True) if x is not None}
    return lmul_onnx.runtime.run(session, feeds)[0]


@pytest.fixture
def run_op() -> Callable[..., np.ndarray]:
    return run_single_op
