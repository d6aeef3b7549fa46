"""lmul-onnx: run ONNX models with L-Mul (linear-complexity multiplication).

The arithmetic (``lmul``, ``lmul_matmul``, ``lmul_gemm``, ``lmul_conv``,
``lmul_conv_transpose``) follows ``SPEC.md`` bit for
bit; the native custom-op library makes onnxruntime run the ``lmul`` op domain.
"""

from lmul_onnx.conv import lmul_conv, lmul_conv_transpose
from lmul_onnx.convert import ConversionReport, ModelLoadError, convert, convert_file
from lmul_onnx.numerics import (
    lmul,
    lmul_gemm,
    lmul_matmul,
    offset_exponent_bits,
    round_mantissa,
)
from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION
from lmul_onnx.plan import Plan, load_plan
from lmul_onnx.runtime import InferenceSession, LibraryNotFoundError, get_library_path, session_options
from lmul_onnx.tune import Budget, TuneResult, tune
from lmul_onnx.validate import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "DOMAIN",
    "DOMAIN_VERSION",
    "Budget",
    "ConversionReport",
    "InferenceSession",
    "LibraryNotFoundError",
    "ModelLoadError",
    "Plan",
    "TuneResult",
    "ValidationReport",
    "convert",
    "convert_file",
    "get_library_path",
    "lmul",
    "lmul_conv",
    "lmul_conv_transpose",
    "lmul_gemm",
    "lmul_matmul",
    "load_plan",
    "offset_exponent_bits",
    "round_mantissa",
    "session_options",
    "tune",
    "validate",
]
