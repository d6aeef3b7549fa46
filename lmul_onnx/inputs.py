"""Model inputs for validation: read from an ``.npz`` or generated from the signature,
one sample at a time (a run of many samples never holds more than one in memory).

Generated inputs are seeded (sample ``i`` uses seed ``seed + i``): float inputs from
N(0, 1) or uniformly from ``--input-range NAME=LO:HI``; integer inputs uniformly from
``[LO, HI)``, by default ``[0, 100)`` — and ``1`` for inputs whose name contains
``mask``; boolean inputs at random. Symbolic dimensions are bound by ``--dim NAME=N``;
an unbound one defaults to 1 when its name looks like a batch (``batch``, ``N``, ...)
and to 16 otherwise. :func:`describe` states every such choice, and validate's report
prints it.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmul_onnx.graph import dtype_from_ort

_BATCH_LIKE = re.compile(r"^(n|b|batch.*|.*_batch|batch_size)$", re.IGNORECASE)
DEFAULT_INT_RANGE = (0, 100)
MASK_RANGE = (1, 2)
DEFAULT_DIM = 16
BATCH_DIM = 1


class InputError(ValueError):
    """Inputs (or input options) that do not fit the model."""


@dataclass(frozen=True)
class InputSignature:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


@dataclass
class InputOptions:
    """How to make inputs: dimension bindings, value ranges, seed."""

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


def check_options(specs: list[InputSignature], options: InputOptions) -> None:
    """Refuse ``--dim`` / ``--input-range`` names the model does not have, and bad values."""
    symbols = {d for spec in specs for d in spec.shape if isinstance(d, str)}
    unknown = sorted(set(options.dims) - symbols)
    if unknown:
        raise InputError(
            f"--dim {', '.join(unknown)}: no such symbolic input dimension; "
            f"the model's are {', '.join(sorted(symbols)) or 'none'}"
        )
    for name, value in options.dims.items():
        if not isinstance(value, int) or value < 1:
            raise InputError(f"--dim {name}={value}: a dimension must be an integer >= 1")
    names = {spec.name: spec for spec in specs}
    unknown = sorted(set(options.ranges) - set(names))
    if unknown:
        raise InputError(
            f"--input-range {', '.join(unknown)}: no such input; the model's are {', '.join(names)}"
        )
    for name, (low, high) in options.ranges.items():
        spec = names[name]
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise InputError(f"--input-range {name}={low:g}:{high:g}: needs finite LO < HI")
        if spec.dtype.kind in "iu":
            info = np.iinfo(spec.dtype)
            if low != int(low) or high != int(high) or low < info.min or high - 1 > info.max:
                raise InputError(
                    f"--input-range {name}={low:g}:{high:g}: {spec.dtype} input needs integers "
                    f"in [{info.min}, {info.max + 1}]"
                )


def _dim(dim: int | str | None, options: InputOptions) -> tuple[int, str | None]:
    """(value, how it was chosen) of one dimension; how is None for a fixed one."""
    if isinstance(dim, int) and dim >= 0:
        return dim, None
    if isinstance(dim, str) and dim in options.dims:
        return options.dims[dim], "--dim"
    if isinstance(dim, str) and _BATCH_LIKE.match(dim):
        return BATCH_DIM, "default"
    if isinstance(dim, str):
        return DEFAULT_DIM, "default"
    return BATCH_DIM, "default"


def _concrete_shape(spec: InputSignature, options: InputOptions) -> tuple[int, ...]:
    return tuple(_dim(d, options)[0] for d in spec.shape)


def _range(spec: InputSignature, options: InputOptions) -> tuple[float, float] | None:
    """The value range of a generated input; None for N(0, 1) floats and booleans."""
    if spec.name in options.ranges:
        return options.ranges[spec.name]
    if spec.dtype.kind in "iu":
        return MASK_RANGE if "mask" in spec.name.lower() else DEFAULT_INT_RANGE
    return None


def describe(specs: list[InputSignature], options: InputOptions) -> dict[str, dict[str, object]]:
    """What :func:`generate` feeds each input: dtype, shape, values, and which of them
    are defaults (``{"dtype", "shape", "values", "defaults": [...]}``)."""
    result: dict[str, dict[str, object]] = {}
    for spec in specs:
        chosen = [_dim(d, options) for d in spec.shape]
        defaults = [f"{d}={v}" for d, (v, how) in zip(spec.shape, chosen, strict=True) if how == "default"]
        bounds = _range(spec, options)
        if spec.dtype.kind == "b":
            values = "random booleans"
        elif bounds is None:
            values = "N(0, 1)"
        elif spec.dtype.kind == "f":
            values = f"uniform [{bounds[0]:g}, {bounds[1]:g})"
        else:
            values = f"integers [{int(bounds[0])}, {int(bounds[1])})"
        if bounds is not None and spec.name not in options.ranges:
            defaults.append("values")
        result[spec.name] = {
            "dtype": str(spec.dtype),
            "shape": [v for v, _ in chosen],
            "values": values,
            "defaults": defaults,
        }
    return result


def generate(specs: list[InputSignature], options: InputOptions, sample: int = 0) -> dict[str, np.ndarray]:
    """One sample of seeded inputs (sample ``i`` uses seed ``seed + i``)."""
    rng = np.random.default_rng(options.seed + sample)
    feeds = {}
    for spec in specs:
        shape = _concrete_shape(spec, options)
        bounds = _range(spec, options)
        if spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif spec.dtype.kind == "f":
            if bounds is None:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.uniform(bounds[0], bounds[1], shape).astype(spec.dtype)
        else:
            assert bounds is not None
            feeds[spec.name] = rng.integers(int(bounds[0]), int(bounds[1]), shape).astype(spec.dtype)
    return feeds


def generated(specs: list[InputSignature], options: InputOptions, samples: int) -> Iterator[dict]:
    """``samples`` generated samples, made one at a time."""
    check_options(specs, options)
    for index in range(samples):
        yield generate(specs, options, index)


def _check_sample(path: str | Path, feeds: Mapping[str, np.ndarray], specs: list[InputSignature]) -> None:
    expected = {s.name: s for s in specs}
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


def npz_samples(path: str | Path, specs: list[InputSignature]) -> tuple[int, Iterator[dict]]:
    """(number of samples, the samples one at a time) of an ``.npz``: keys ``NAME`` (one
    sample) or ``I/NAME`` (sample I). Pickled arrays are refused."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise InputError(f"{path}: cannot read inputs ({type(error).__name__}: {error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not an .npz archive (a single .npy array?)")
    keys: dict[int, dict[str, str]] = {}
    for key in archive.files:
        index, _, name = key.partition("/")
        if not (index.isdigit() and name):  # a plain input name (which may hold a "/")
            index, name = "0", key
        keys.setdefault(int(index), {})[name] = key
    expected = {s.name for s in specs}
    for index, names in keys.items():
        missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
        if missing or extra:
            archive.close()
            raise InputError(
                f"{path}: sample {index}: inputs do not match the model "
                f"(missing {missing}, unexpected {extra})"
            )
    if not keys:
        archive.close()
        raise InputError(f"{path}: no inputs in the file")

    def samples() -> Iterator[dict]:
        with archive:
            for index in sorted(keys):
                try:
                    feeds = {name: archive[key] for name, key in keys[index].items()}
                except Exception as error:
                    raise InputError(
                        f"{path}: sample {index} cannot be read ({type(error).__name__}: {error})"
                    ) from None
                _check_sample(path, feeds, specs)
                yield feeds

    return len(keys), samples()


def samples_for(
    specs: list[InputSignature], inputs: str | Path | None, samples: int, options: InputOptions
) -> list[dict[str, np.ndarray]]:
    """All the inputs of a run at once (``tune`` reuses them): the samples of an ``.npz``
    when given, else ``samples`` generated ones (options checked as by :func:`generated`)."""
    if inputs is not None:
        return load_npz(inputs, specs)
    return list(generated(specs, options, samples))


def load_npz(path: str | Path, specs: list[InputSignature]) -> list[dict[str, np.ndarray]]:
    """All samples of an ``.npz`` (see :func:`npz_samples`)."""
    return list(npz_samples(path, specs)[1])


class NpzWriter:
    """Writes samples into an ``.npz`` one at a time, in the format :func:`npz_samples`
    reads (``I/NAME`` keys; ``NAME`` when there is only one sample)."""

    def __init__(self, path: str | Path, samples: int) -> None:
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._single = samples == 1

    def add(self, index: int, feeds: Mapping[str, np.ndarray]) -> None:
        for name, value in feeds.items():
            key = name if self._single else f"{index}/{name}"
            with self._zip.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(value), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


def save_npz(path: str | Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Save samples in the format :func:`npz_samples` reads."""
    writer = NpzWriter(path, len(samples))
    try:
        for index, feeds in enumerate(samples):
            writer.add(index, feeds)
    finally:
        writer.close()
