"""Shared fixtures: a seeded generator, sessions of one-node ``lmul`` models, and child
processes for what may crash (bad inputs) or needs another environment (SIMD caps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
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


def _run_with_simd(setting: str | None, out: Path, runner: str, *args: str) -> dict[str, np.ndarray]:
    """Run ``runner`` (a script saving arrays to ``out``) with the SIMD width capped."""
    env = dict(os.environ)
    env.pop("LMUL_SIMD", None)
    if setting:
        env["LMUL_SIMD"] = setting
    subprocess.run(
        [sys.executable, "-c", runner, str(out), *args], env=env, check=True, capture_output=True, text=True
    )
    with np.load(out) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="session")
def run_with_simd() -> Callable[..., dict[str, np.ndarray]]:
    return _run_with_simd


CASE_RUNNER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort
    import lmul_onnx, lmul_onnx.runtime
    from lmul_onnx.testing import single_op_model

    results = {}
    for name, (op, dtypes, attrs, shapes) in json.loads(sys.argv[1]).items():
        stage = "create"
        try:
            model = single_op_model(op, [np.dtype(d) for d in dtypes], node_name="bad_node", **attrs)
            session = lmul_onnx.InferenceSession(model.SerializeToString())
            stage = "run"
            feeds = {f"in{i}": np.ones(s, dtype=d) for i, (s, d) in enumerate(zip(shapes, dtypes))}
            session.run(None, feeds)
            results[name] = {"stage": "ok", "error": ""}
        except Exception as error:
            results[name] = {"stage": stage, "error": str(error)}
    print(json.dumps(results))
    """
)


def _run_bad_cases(cases: dict[str, tuple]) -> dict[str, dict[str, str]]:
    """Run {name: (op, dtypes, attributes, shapes)} in one child process; a crash fails."""
    completed = subprocess.run(
        [sys.executable, "-c", CASE_RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, f"process died ({completed.returncode}): {completed.stderr[-2000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def run_bad_cases() -> Callable[[dict[str, tuple]], dict[str, dict[str, str]]]:
    return _run_bad_cases
