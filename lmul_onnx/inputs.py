"""Model inputs for validation: loaded from an ``.npz`` or generated from the signature.

Generated inputs are seeded: float inputs from N(0, 1); integer inputs uniformly from a
range (default ``[0, 100)``, and ``1`` for inputs whose name contains ``mask``), which
``--input-range NAME=LO:HI`` overrides; boolean inputs at random. Symbolic dimensions are
bound by ``--dim NAME=N``; unbound ones default to 1 for batch-like names and 16 otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmul_onnx.graph import dtype_from_ort

_BATCH_LIKE = re.compile(r"^(n|b|batch.*|.*_batch|batch_size)$", re.IGNORECASE)
DEFAULT_INT_RANGE = (0, 100)
DEFAULT_DIM = 16


class InputError(ValueError):
    """Inputs that do not fit the model."""


@dataclass(frozen=True)
class InputSignature:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


@dataclass
class InputOptions:
    """How to make inputs: dimension bindings, integer ranges, seed."""

    dims: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0


def signature(session: object) -> list[InputSignature]:
    """The inputs of an onnxruntime session as (name, numpy dtype, shape)."""
    result = []
    for arg in session.get_inputs():  # type: ignore[attr-defined]
        dtype = dtype_from_ort(arg.type)
        if dtype is None or dtype.kind not in "fiub":  # numpy's own numbers and booleans
            raise InputError(
                f"input {arg.name!r} has type {arg.type}, which cannot be generated; use --inputs"
            )
        result.append(InputSignature(arg.name, dtype, tuple(arg.shape)))
    return result


def _concrete_shape(spec: InputSignature, options: InputOptions) -> tuple[int, ...]:
    shape = []
    for dim in spec.shape:
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in options.dims:
            shape.append(options.dims[dim])
        elif isinstance(dim, str) and _BATCH_LIKE.match(dim):
            shape.append(1)
        elif isinstance(dim, str):
            shape.append(DEFAULT_DIM)
        else:
            shape.append(1)
    return tuple(shape)


def generate(specs: list[InputSignature], options: InputOptions, sample: int = 0) -> dict[str, np.ndarray]:
    """One sample of seeded inputs (sample ``i`` uses seed ``seed + i``)."""
    rng = np.random.default_rng(options.seed + sample)
    feeds = {}
    for spec in specs:
        shape = _concrete_shape(spec, options)
        if spec.dtype.kind == "f":
            if spec.name in options.ranges:
                low, high = options.ranges[spec.name]
                feeds[spec.name] = rng.uniform(low, high, shape).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            default = (1, 2) if "mask" in spec.name.lower() else DEFAULT_INT_RANGE
            low, high = options.ranges.get(spec.name, default)
            feeds[spec.name] = rng.integers(int(low), int(high), shape).astype(spec.dtype)
    return feeds


def samples_for(
    specs: list[InputSignature], inputs: str | Path | None, samples: int, options: InputOptions
) -> list[dict[str, np.ndarray]]:
    """The inputs of a run: the samples of an ``.npz`` when given, else ``samples``
    generated ones (what ``validate`` and ``tune`` both use)."""
    if inputs is not None:
        return load_npz(inputs, specs)
    return [generate(specs, options, i) for i in range(samples)]


def load_npz(path: str | Path, specs: list[InputSignature]) -> list[dict[str, np.ndarray]]:
    """Samples from an ``.npz``: keys ``NAME`` (one sample) or ``I/NAME`` (sample I)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise InputError(f"{path}: cannot read inputs ({error})") from None
    samples: dict[int, dict[str, np.ndarray]] = {}
    with archive:
        for key in archive.files:
            index, _, name = key.rpartition("/")
            samples.setdefault(int(index) if index.isdigit() else 0, {})[name] = archive[key]
    expected = {s.name: s for s in specs}
    result = []
    for index in sorted(samples):
        feeds = samples[index]
        missing, extra = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
        if missing or extra:
            raise InputError(f"{path}: inputs do not match the model (missing {missing}, unexpected {extra})")
        for name, value in feeds.items():
            spec = expected[name]
            if value.dtype != spec.dtype:
                raise InputError(f"{path}: input {name!r} is {value.dtype}, the model expects {spec.dtype}")
            if value.ndim != len(spec.shape) or any(
                isinstance(d, int) and d >= 0 and d != v for d, v in zip(spec.shape, value.shape, strict=True)
            ):
                raise InputError(
                    f"{path}: input {name!r} has shape {value.shape}, the model expects {spec.shape}"
                )
        result.append(feeds)
    if not result:
        raise InputError(f"{path}: no inputs in the file")
    return result


def save_npz(path: str | Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Save samples in the format :func:`load_npz` reads."""
    if len(samples) == 1:
        np.savez(path, **samples[0])
    else:
        np.savez(path, **{f"{i}/{name}": v for i, feeds in enumerate(samples) for name, v in feeds.items()})
