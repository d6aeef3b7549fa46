"""The ``lmul`` op domain: names, version and attributes, in one table.

Everything that writes or reads ``lmul`` nodes (the rewrite passes, the energy counter,
the portable reference, the tests) takes these names from here, and
:func:`check_model` holds a model to the domain's attribute rules (SPEC section 3, last
paragraph) where the native kernels cannot: onnxruntime's C API (version <= 21) reads a
node's attributes only by name, so the kernels refuse wrongly typed attributes
themselves but cannot see an attribute the op does not define.

Only the standard library is imported at module level (the command line reads these
names before it needs onnx); :func:`domain_problems` imports onnx and onnx-ir.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

DOMAIN = "lmul"
DOMAIN_VERSION = 1
MANTISSA_BITS = "mantissa_bits"
OFFSET = "offset"  # SPEC section 4

# onnx.AttributeProto.AttributeType values (the same numbers as onnx_ir.AttributeType).
_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS = 1, 2, 3, 4, 6, 7

# Attributes every lmul op takes (SPEC sections 3 and 4), with their types.
COMMON_ATTRIBUTES: Mapping[str, int] = {MANTISSA_BITS: _INT, OFFSET: _INT}


@dataclass(frozen=True)
class OpMapping:
    """A standard ONNX op and the ``lmul`` op that replaces it."""

    standard: str
    lmul: str
    description: str
    attributes: Mapping[str, int] = field(default_factory=dict)  # the op's own, beside COMMON_ATTRIBUTES


# ONNX Conv's attributes (ConvTranspose adds output_padding and output_shape).
_CONV_ATTRIBUTES: Mapping[str, int] = {
    "auto_pad": _STRING,
    "dilations": _INTS,
    "group": _INT,
    "kernel_shape": _INTS,
    "pads": _INTS,
    "strides": _INTS,
}

OP_MAPPINGS: tuple[OpMapping, ...] = (
    OpMapping("MatMul", "LMulMatMul", "numpy matmul, every product an L-Mul"),
    OpMapping(
        "Gemm",
        "LMulGemm",
        "alpha * (A' (*) B') + beta * C, products by L-Mul",
        {"alpha": _FLOAT, "beta": _FLOAT, "transA": _INT, "transB": _INT},
    ),
    OpMapping("Mul", "LMul", "element-wise L-Mul with numpy broadcasting"),
    OpMapping("Conv", "LMulConv", "ONNX Conv (1-D to 3-D, groups), products by L-Mul", _CONV_ATTRIBUTES),
    OpMapping(
        "ConvTranspose",
        "LMulConvTranspose",
        "ONNX ConvTranspose, products by L-Mul",
        {**_CONV_ATTRIBUTES, "output_padding": _INTS, "output_shape": _INTS},
    ),
)

STANDARD_TO_LMUL: dict[str, str] = {m.standard: m.lmul for m in OP_MAPPINGS}
LMUL_TO_STANDARD: dict[str, str] = {m.lmul: m.standard for m in OP_MAPPINGS}
SUPPORTED_OPS: tuple[str, ...] = tuple(m.standard for m in OP_MAPPINGS)
# Every attribute each lmul op defines, with its ONNX attribute type.
ATTRIBUTES: dict[str, dict[str, int]] = {m.lmul: {**COMMON_ATTRIBUTES, **m.attributes} for m in OP_MAPPINGS}


class DomainError(ValueError):
    """A model breaks the rules of the ``lmul`` domain (SPEC section 3)."""


_TYPE_NAMES = {
    _INT: "an int",
    _FLOAT: "a float",
    _STRING: "a string",
    _INTS: "a list of ints",
    _FLOATS: "a list of floats",
    _TENSOR: "a tensor",
}


def type_name(attribute_type: int) -> str:
    """``"an int"``, ``"a list of ints"``, ... (the kernels' wording)."""
    import onnx

    name = _TYPE_NAMES.get(attribute_type)
    return name or f"a {onnx.AttributeProto.AttributeType.Name(attribute_type).lower()}"


def domain_problems(model: onnx.ModelProto | ir.Model) -> list[str]:
    """Every breach of the domain's rules in ``model``, one line each (empty: none).

    Checked: the ``lmul`` import version (model and model-local functions) is
    :data:`DOMAIN_VERSION`; every node of a known ``lmul`` op has only the attributes
    :data:`ATTRIBUTES` lists, each of its type. Value ranges (``mantissa_bits``,
    ``offset``, ...) are the kernels' to check.
    """
    import onnx
    import onnx_ir as ir

    from lmul_onnx import graph  # graph imports this module: import when called

    if isinstance(model, onnx.ModelProto):
        model = ir.from_proto(model)  # wraps the tensors, copies no weights
    problems = []
    imports = [(model.opset_imports.get(DOMAIN), "the model")]
    imports += [(f.opset_imports.get(DOMAIN), f"function {f.name!r}") for f in model.functions.values()]
    for version, owner in imports:
        if version is not None and version != DOMAIN_VERSION:
            problems.append(
                f"{owner} imports the {DOMAIN!r} domain at version {version}; "
                f"only version {DOMAIN_VERSION} exists"
            )
    for entry in graph.walk(model):
        node = entry.node
        defined = ATTRIBUTES.get(node.op_type) if node.domain == DOMAIN else None
        if defined is None:
            continue
        where = f"{DOMAIN}.{node.op_type} node {node.name!r} ({entry.location})"
        for attribute in node.attributes.values():
            wanted = defined.get(attribute.name)
            if wanted is None:
                problems.append(
                    f"{where}: unknown attribute {attribute.name!r} (defined: {', '.join(sorted(defined))})"
                )
            elif not attribute.is_ref() and int(attribute.type) != wanted:
                problems.append(
                    f"{where}: attribute {attribute.name!r} must be {type_name(wanted)}, "
                    f"got {type_name(int(attribute.type))}"
                )
    return problems


def check_model(model: onnx.ModelProto | ir.Model) -> None:
    """Raise :class:`DomainError` (the first problem, and how many there are) when
    :func:`domain_problems` finds any."""
    problems = domain_problems(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DomainError(problems[0] + more)
