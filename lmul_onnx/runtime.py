"""Loading the native custom-op library into onnxruntime.

``get_library_path()`` follows onnxruntime-extensions' convention, so the library can be
registered by hand::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(lmul_onnx.get_library_path())

or through :func:`session_options` / :class:`InferenceSession`, which do it for you.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort

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


def session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``options`` (or new ``SessionOptions``) with the ``lmul`` ops registered."""
    options = options if options is not None else ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` that can run ``lmul`` ops.

    Takes the same arguments as ``onnxruntime.InferenceSession``; the custom-op library
    is registered on the given (or default) session options. Defaults to the CPU
    provider, the only one the ``lmul`` kernels exist for.
    """

    def __init__(
        self,
        path_or_bytes: str | bytes | os.PathLike[str],
        sess_options: ort.SessionOptions | None = None,
        providers: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            os.fspath(path_or_bytes) if isinstance(path_or_bytes, os.PathLike) else path_or_bytes,
            sess_options=session_options(sess_options),
            providers=providers or ["CPUExecutionProvider"],
            **kwargs,
        )
