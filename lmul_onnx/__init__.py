"""lmul-onnx: run ONNX models with L-Mul (linear-complexity multiplication).

The arithmetic (``lmul``, ``lmul_matmul``, ``lmul_gemm``, ``lmul_conv``,
``lmul_conv_transpose``) follows ``SPEC.md`` bit for
bit; the native custom-op library makes onnxruntime run the ``lmul`` op domain.

The public names below are imported on first use (PEP 562), so ``import lmul_onnx`` —
and the ``lmul-onnx`` command's ``--help`` — do not pay for numpy, onnx and onnxruntime
until they are needed.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE: dict[str, str] = {
    "ConversionReport": "lmul_onnx.convert",
    "ModelLoadError": "lmul_onnx.convert",
    "convert": "lmul_onnx.convert",
    "convert_file": "lmul_onnx.convert",
    "lmul": "lmul_onnx.numerics",
    "lmul_conv": "lmul_onnx.conv",
    "lmul_conv_transpose": "lmul_onnx.conv",
    "lmul_gemm": "lmul_onnx.numerics",
    "lmul_matmul": "lmul_onnx.numerics",
    "offset_exponent_bits": "lmul_onnx.numerics",
    "round_mantissa": "lmul_onnx.numerics",
    "DOMAIN": "lmul_onnx.ops",
    "DOMAIN_VERSION": "lmul_onnx.ops",
    "InferenceSession": "lmul_onnx.runtime",
    "LibraryNotFoundError": "lmul_onnx.runtime",
    "get_library_path": "lmul_onnx.runtime",
    "session_options": "lmul_onnx.runtime",
    "ValidationReport": "lmul_onnx.validate",
    "validate": "lmul_onnx.validate",
    "Plan": "lmul_onnx.plan",
    "load_plan": "lmul_onnx.plan",
    "Budget": "lmul_onnx.tune",
    "TuneResult": "lmul_onnx.tune",
    "tune": "lmul_onnx.tune",
}

__all__ = sorted(_WHERE)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on use
    from lmul_onnx.conv import lmul_conv, lmul_conv_transpose  # noqa: F401
    from lmul_onnx.convert import ConversionReport, ModelLoadError, convert, convert_file  # noqa: F401
    from lmul_onnx.numerics import lmul, lmul_gemm, lmul_matmul, offset_exponent_bits, round_mantissa  # noqa: F401
    from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION  # noqa: F401
    from lmul_onnx.plan import Plan, load_plan  # noqa: F401
    from lmul_onnx.runtime import InferenceSession, LibraryNotFoundError, get_library_path, session_options  # noqa: F401
    from lmul_onnx.tune import Budget, TuneResult, tune  # noqa: F401
    from lmul_onnx.validate import ValidationReport, validate  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lmul_onnx' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    """Keeps ``lmul_onnx.convert``, ``validate`` and ``tune`` the functions: importing the
    submodule of the same name would otherwise replace the attribute with the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
