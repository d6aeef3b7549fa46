"""Which nodes become L-Mul: the selection rules of ``lmul-onnx convert``.

A node is converted when it is a MatMul/Gemm/Mul/Conv/ConvTranspose of the default domain chosen by
``ops``, works on float32/float16/bfloat16, falls in the ``scope``, and passes the
``include``/``exclude`` name filters, carries only the attributes its ``lmul`` op takes,
correctly typed (``ALLOWED_ATTRIBUTES``), and has no constant operand of exact powers of
two (:mod:`exact_products`; ``every_product`` converts those too). A ``plan`` (from
``lmul-onnx tune``) replaces these choices: exactly the nodes it names are converted, at
its widths. Every other node gets a reason, so the summary can say why it stayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from lmul_onnx.choices import Scope
from lmul_onnx.graph import dtype_name, mantissa_bits
from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD, OP_MAPPINGS, STANDARD_TO_LMUL, SUPPORTED_OPS, type_name
from lmul_onnx.passes.exact_products import VALUE_PRESERVING_OPS, exact_product_reason

# The element types the kernels compute on.
CONVERTIBLE_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})

# Ops that move or re-type a tensor without computing on it: a weight seen through them
# is still a weight.
PLUMBING_OPS = VALUE_PRESERVING_OPS | {"DequantizeLinear"}
LEFT_BY_PLAN = "left exact by the plan"


@dataclass(frozen=True)
class SelectionOptions:
    """The user's choice of nodes; see ``lmul_onnx.convert`` for each option."""

    ops: tuple[str, ...] = SUPPORTED_OPS
    scope: Scope = Scope.ALL
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mantissa_bits: int | None = None
    mantissa_bits_for: tuple[tuple[str, int], ...] = ()
    every_product: bool = False  # also convert products by exact powers of two / 0-1 masks
    plan: tuple[tuple[str, str, int | None], ...] | None = None  # (key, name, bits) to convert
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ops) - set(SUPPORTED_OPS))
        if unknown:
            raise ValueError(
                f"unsupported op type(s) {', '.join(unknown)}; choose from {', '.join(SUPPORTED_OPS)}"
            )
        if not self.ops:
            raise ValueError("no op types selected")
        object.__setattr__(self, "scope", Scope(self.scope))
        for pattern in (*self.include, *self.exclude, *(p for p, _ in self.mantissa_bits_for)):
            try:
                self._patterns[pattern] = re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None
        planned = tuple(b for _, _, b in self.plan or ())
        for bits in (self.mantissa_bits, *(b for _, b in self.mantissa_bits_for), *planned):
            if bits is not None and not 1 <= bits <= 23:
                raise ValueError(f"mantissa bits must be in 1..23, got {bits}")

    def planned(self) -> dict[str, tuple[str, int | None]]:
        """``{node key: (name, mantissa bits)}`` of the plan's converted nodes (empty without
        a plan)."""
        return {key: (name, bits) for key, name, bits in self.plan or ()}

    def matches(self, pattern: str, name: str) -> bool:
        return self._patterns[pattern].search(name) is not None

    def bits_for(self, name: str) -> int | None:
        """The mantissa width of a node: the first matching override, else the default."""
        for pattern, bits in self.mantissa_bits_for:
            if self.matches(pattern, name):
                return bits
        return self.mantissa_bits


# The attributes a standard op may carry for its `lmul` replacement to compute the same
# thing: the `lmul` op's own (ops.OP_MAPPINGS, opset >= 7 forms), each of its type. Legacy
# forms — Mul/Gemm `broadcast`/`axis` (opset < 7), Mul `consumed_inputs` (opset 1) — and
# attributes onnxruntime itself would refuse (a wrongly typed alpha, an unknown name)
# leave the node as it is, with the reason.
ALLOWED_ATTRIBUTES: dict[str, Mapping[str, int]] = {m.standard: m.attributes for m in OP_MAPPINGS}
_LEGACY = ("broadcast", "axis", "consumed_inputs")


def attribute_problem(node: ir.Node) -> str | None:
    """Why ``node``'s attributes keep it from being rewritten, or None."""
    allowed = ALLOWED_ATTRIBUTES.get(node.op_type, {})
    for name, attribute in node.attributes.items():
        if name in _LEGACY and name not in allowed:
            return f"legacy {node.op_type} attribute {name!r} (opset < 7 semantics)"
        if name not in allowed:
            return f"unknown {node.op_type} attribute {name!r}"
        if not attribute.is_ref() and int(attribute.type) != allowed[name]:
            return (
                f"{node.op_type} attribute {name!r} is {type_name(int(attribute.type))}, "
                f"not {type_name(allowed[name])}"
            )
    return None


@dataclass(frozen=True)
class Decision:
    """The verdict on one node."""

    convert: bool
    reason: str = ""
    element_type: str | None = None
    mantissa_bits: int | None = None
    offset: int | None = None  # SPEC 4 attribute set by passes.offsets (None: the paper's)


def is_constant(value: ir.Value | None) -> bool:
    """True for an initializer or a Constant output, also through plumbing ops."""
    seen = 0
    while value is not None and seen < 32:
        if value.const_value is not None or value.is_initializer():
            return True
        producer = value.producer()
        if producer is None:
            return False
        if producer.op_type in ("Constant", "ConstantOfShape") and producer.domain in ("", "ai.onnx"):
            return True
        if producer.op_type not in PLUMBING_OPS or producer.domain not in ("", "ai.onnx"):
            return False
        value = producer.inputs[0] if producer.inputs else None
        seen += 1
    return False


def decide(
    node: ir.Node,
    options: SelectionOptions,
    element_types: set[ir.DataType | None],
    name: str,
    key: str | None = None,
) -> Decision:
    """Decide whether ``node`` becomes an ``lmul`` op. ``name`` is its qualified display
    name; ``element_types`` its element type in every context (one per call signature for a
    node of a function body); ``key`` its identity in a plan (:attr:`graph.NodeEntry.key`)."""
    if node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD:
        return Decision(False, "already L-Mul")
    if node.domain not in ("", "ai.onnx") or node.op_type not in STANDARD_TO_LMUL:
        return Decision(False, "not a MatMul/Gemm/Mul/Conv/ConvTranspose")
    if node.op_type not in options.ops:
        return Decision(False, "op type not selected (--ops)")
    problem = attribute_problem(node)
    if problem is not None:
        return Decision(False, problem)
    known = {t for t in element_types if t is not None}
    if len(known) > 1:
        names = ", ".join(sorted(dtype_name(t) for t in known))
        return Decision(False, f"function called with different element types ({names}): not specialised")
    if not known or None in element_types:
        return Decision(False, "element type unknown")
    (element_type,) = known
    if element_type not in CONVERTIBLE_TYPES:
        return Decision(False, f"{dtype_name(element_type)} tensors are not rewritten")
    type_name, type_bits = dtype_name(element_type), mantissa_bits(element_type) or 0
    if options.plan is not None:
        planned = options.planned().get(key or name)
        if planned is None:
            return Decision(False, LEFT_BY_PLAN, type_name)
        if planned[0] != name:
            raise ValueError(
                f"the plan's node {key!r} is {planned[0]!r}, this model's is {name!r}: "
                "a plan for another model?"
            )
        return _checked(Decision(True, "", type_name, planned[1]), name, type_bits)
    constant = any(is_constant(v) for v in node.inputs[:2])
    if options.scope is Scope.ATTENTION and constant:
        return Decision(False, "has a constant operand (--scope attention)", type_name)
    if options.scope is Scope.WEIGHTS and not constant:
        return Decision(False, "no constant operand (--scope weights)", type_name)
    if options.include and not any(options.matches(p, name) for p in options.include):
        return Decision(False, "not matched by --include", type_name)
    if any(options.matches(p, name) for p in options.exclude):
        return Decision(False, "matched by --exclude", type_name)
    if not options.every_product:
        exact = exact_product_reason(node)
        if exact is not None:
            return Decision(False, exact, type_name)
    return _checked(Decision(True, "", type_name, options.bits_for(name)), name, type_bits)


def _checked(decision: Decision, name: str, type_bits: int) -> Decision:
    """``decision``, unless its mantissa width exceeds the node's type."""
    bits = decision.mantissa_bits
    if bits is not None and bits > type_bits:
        raise ValueError(
            f"node {name!r} is {decision.element_type} ({type_bits} mantissa bits): "
            f"cannot use {bits} mantissa bits"
        )
    return decision
