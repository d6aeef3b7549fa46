"""Loading the native custom-op library into onnxruntime.

``get_library_path()`` follows onnxruntime-extensions' convention, so the library can be
registered by hand::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(lmul_onnx.get_library_path())

or through :func:`session_options` / :class:`InferenceSession`, which do it for you.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort

from lmul_onnx.ops import check_model

LIBRARY_NAME = "liblmul_onnx_ops.so"
LIBRARY_ENV = "LMUL_ONNX_LIBRARY"


class LibraryNotFoundError(RuntimeError):
    """The custom-op library is not installed next to the package."""


def get_library_path() -> str:
    """Return the path of the native custom-op library.

    Looked up in this order: the ``LMUL_ONNX_LIBRARY`` environment variable, the
    package folder, and the files of the installed ``lmul-onnx`` distribution (which
    finds the built library even when the package is imported from a source checkout).

    Raises:
        LibraryNotFoundError: when no built library can be found.
    """
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not Path(override).is_file():
            raise LibraryNotFoundError(f"{LIBRARY_ENV}={override} is not a file")
        return str(Path(override).resolve())
    beside = Path(__file__).with_name(LIBRARY_NAME)
    if beside.is_file():
        return str(beside)
    try:
        for file in metadata.files("lmul-onnx") or ():
            if file.name == LIBRARY_NAME:
                return str(Path(file.locate()).resolve())
    except metadata.PackageNotFoundError:
        pass
    raise LibraryNotFoundError(
        f"{LIBRARY_NAME} not found: install lmul-onnx with pip (which builds it), "
        f"or set {LIBRARY_ENV} to a built copy"
    )


_REGISTERED = "lmul_onnx.custom_ops_library"


def _library() -> ctypes.CDLL:
    return ctypes.CDLL(get_library_path())


def simd_level() -> str:
    """The SIMD level the matrix-product kernels use on this CPU: ``"avx512f"``, ``"avx2"``
    or ``"none"`` (the portable loops), after the ``LMUL_SIMD`` cap in the environment."""
    function = _library().lmul_simd_level
    function.restype = ctypes.c_char_p
    function.argtypes = []
    return function().decode()


def library_api_version() -> int:
    """The onnxruntime C API version the library asks for (it runs on onnxruntime >= 1.<that>)."""
    function = _library().lmul_ort_api_version
    function.restype = ctypes.c_uint32
    function.argtypes = []
    return int(function())


def cpu_name() -> str:
    """This machine's CPU model, as benchmark figures and bug reports must name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``options`` (or new ``SessionOptions``) with the ``lmul`` ops registered.

    Registering twice is harmless: the options remember the library (in a session
    config entry), so ``InferenceSession(model, session_options())`` works.
    """
    options = options if options is not None else ort.SessionOptions()
    try:
        options.get_session_config_entry(_REGISTERED)
    except RuntimeError:  # not registered yet
        library = get_library_path()
        options.register_custom_ops_library(library)
        options.add_session_config_entry(_REGISTERED, library)
    return options


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` that can run ``lmul`` ops.

    Takes the same arguments as ``onnxruntime.InferenceSession``; the custom-op library
    is registered on the given (or default) session options. Defaults to the CPU
    provider, the only one the ``lmul`` kernels exist for.

    Before onnxruntime sees the model, :func:`lmul_onnx.ops.check_model` refuses what
    the kernels cannot (an attribute an ``lmul`` op does not define, an ``lmul`` import
    other than version 1) with :class:`lmul_onnx.ops.DomainError`.
    """

    def __init__(
        self,
        path_or_bytes: str | bytes | os.PathLike[str],
        sess_options: ort.SessionOptions | None = None,
        providers: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        source = os.fspath(path_or_bytes) if isinstance(path_or_bytes, os.PathLike) else path_or_bytes
        _check_domain(source)
        super().__init__(
            source,
            sess_options=session_options(sess_options),
            providers=providers or ["CPUExecutionProvider"],
            **kwargs,
        )


def _check_domain(source: str | bytes) -> None:
    """:func:`check_model` on a model file or serialised model (weights not loaded); a model
    that does not parse is left to onnxruntime to report."""
    try:
        if isinstance(source, bytes):
            model = onnx.load_from_string(source)
        else:
            model = onnx.load(source, load_external_data=False)
    except Exception:  # onnxruntime gives its own error for an unreadable model
        return
    check_model(model)


def _to_ort_value(array: np.ndarray) -> ort.OrtValue | np.ndarray:
    """numpy arrays go through as they are, except bfloat16, which onnxruntime's numpy
    bridge does not know: it travels as raw 16-bit patterns tagged BFLOAT16 (in the array's
    own shape: ``np.ascontiguousarray`` alone would make a rank-0 array rank 1)."""
    if array.dtype.name == "bfloat16":
        bits = np.ascontiguousarray(array).view(np.uint16).reshape(array.shape)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx.TensorProto.BFLOAT16)
    return array


def _copy_bfloat16(value: ort.OrtValue) -> np.ndarray:
    """Copy a bfloat16 OrtValue (CPU memory) into a new ``ml_dtypes.bfloat16`` array."""
    count = int(np.prod(value.shape(), dtype=np.int64))
    if count == 0:
        return np.zeros(value.shape(), dtype=ml_dtypes.bfloat16)
    raw = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.array(raw, dtype=np.uint16).reshape(value.shape()).view(ml_dtypes.bfloat16)


def run(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """``session.run`` that also accepts and returns bfloat16 arrays (``ml_dtypes``)."""
    names = list(output_names) if output_names is not None else [o.name for o in session.get_outputs()]
    if not any(np.asarray(x).dtype.name == "bfloat16" for x in feeds.values()):
        return session.run(names, dict(feeds))
    values = {name: _to_ort_value(np.asarray(x)) for name, x in feeds.items()}
    ort_feeds = {
        name: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
        for name, v in values.items()
    }
    outputs = session.run_with_ort_values(names, ort_feeds)
    results = []
    for value in outputs:
        if value.data_type() == "tensor(bfloat16)":
            results.append(_copy_bfloat16(value))
        else:
            results.append(value.numpy())
    return results
