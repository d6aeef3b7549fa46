"""The pass that gives the nodes a conversion rewrote their SPEC section 4 ``offset``.

Runs after :class:`lmul_onnx.passes.rewrite.LMulRewritePass` on the nodes it converted
(its ``on_convert`` hook collects them): nodes that were ``lmul`` ops already keep
whatever offset they had, so converting a converted model changes nothing.

Choices (``lmul-onnx convert --offset``, ``--offset-for REGEX=CHOICE``):

* ``paper`` -- the default: no attribute, the paper's ``1 << (23 - l(m))``;
* ``unbiased`` -- the data-free constant of :data:`lmul_onnx.offsets.UNBIASED_OFFSETS`
  for the node's ``m``;
* ``auto`` -- calibrated per node from data (:mod:`lmul_onnx.calibration`): the pass is
  handed the calibrated offsets by node key; the node's record notes how each was found;
* a number: an integer (decimal or ``0x`` hex) is the attribute itself,
  0 <= offset < 2^23; a number with a decimal point or an exponent is the fraction
  ``offset / 2^23`` in [0, 1), rounded to the nearest integer offset.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from lmul_onnx import numerics
from lmul_onnx.graph import dtype_name, mantissa_bits
from lmul_onnx.offsets import UNBIASED_OFFSETS
from lmul_onnx.ops import OFFSET
from lmul_onnx.passes.rewrite import NodeRecord
from lmul_onnx.passes.selection import CONVERTIBLE_TYPES

PAPER = "paper"
UNBIASED = "unbiased"
AUTO = "auto"
NAMED_CHOICES = (PAPER, UNBIASED, AUTO)
TYPE_BITS = {dtype_name(t): mantissa_bits(t) or 0 for t in CONVERTIBLE_TYPES}  # "float32": 23, ...

Choice = str | int  # "paper", "unbiased", "auto" or an integer offset


def parse_offset(value: str | float) -> Choice:
    """A user's offset choice: ``"paper"``, ``"unbiased"``, ``"auto"`` or a valid integer offset.

    Raises:
        ValueError: anything else, with a one-line message.
    """
    if isinstance(value, bool):
        raise ValueError(f"offset must be paper, unbiased, auto or a number, not {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NAMED_CHOICES:
            return text
        try:
            number: int | float = int(text, 0)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(
                    f"offset {value!r}: choose paper, unbiased, auto, an integer "
                    f"0..{numerics.OFFSET_LIMIT - 1} or a fraction in [0, 1) such as 0.0625"
                ) from None
    else:
        number = value
    if isinstance(number, float):
        if not 0.0 <= number < 1.0:  # also refuses NaN
            raise ValueError(f"offset fraction must be in [0, 1), got {value!r}")
        offset = round(number * numerics.OFFSET_LIMIT)
        if offset >= numerics.OFFSET_LIMIT:
            raise ValueError(f"offset fraction {value!r} rounds to 2^23, above the largest offset")
        return offset
    if not 0 <= number < numerics.OFFSET_LIMIT:
        raise ValueError(
            f"offset must be in 0..{numerics.OFFSET_LIMIT - 1} (0 <= offset < 2^23), got {value!r}"
        )
    return int(number)


def offset_in_effect(offset: int | None, mantissa_bits: int) -> tuple[str, int]:
    """``(choice, value)`` of a node's ``offset`` attribute (None: absent) at width ``m``:
    ``("paper", 1 << (23 - l(m)))``, ``("unbiased", UNBIASED_OFFSETS[m])`` or ``("value", offset)``."""
    if offset is None:
        return PAPER, numerics.paper_offset(mantissa_bits)
    return (UNBIASED if offset == UNBIASED_OFFSETS[mantissa_bits] else "value"), offset


def describe_offset(offset: int | None, mantissa_bits: int) -> str:
    """``"paper 0x100000 (0.12500)"`` / ``"unbiased 0x073386 (0.05626)"`` / ``"value 0x080000 (0.06250)"``."""
    choice, value = offset_in_effect(offset, mantissa_bits)
    return f"{choice} {value:#08x} ({value / numerics.OFFSET_LIMIT:.5f})"


@dataclass(frozen=True)
class OffsetOptions:
    """The default choice and per-node overrides ``((regex, choice), ...)``; first match wins.
    ``by_key`` (a plan's per-node offsets, by node key) comes before both."""

    default: Choice = PAPER
    per_node: tuple[tuple[str, Choice], ...] = ()
    by_key: tuple[tuple[str, Choice], ...] = ()
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", parse_offset(self.default))
        parsed = []
        for pattern, choice in self.per_node:
            try:
                self._patterns[pattern] = re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None
            parsed.append((pattern, parse_offset(choice)))
        object.__setattr__(self, "per_node", tuple(parsed))
        object.__setattr__(self, "by_key", tuple((key, parse_offset(c)) for key, c in self.by_key))

    def choice_for(self, name: str, key: str | None = None) -> Choice:
        for node_key, choice in self.by_key:
            if node_key == key:
                return choice
        for pattern, choice in self.per_node:
            if self._patterns[pattern].search(name):
                return choice
        return self.default

    @property
    def uses_auto(self) -> bool:
        """True when some node may need a calibrated offset."""
        choices = [self.default, *(c for _, c in self.per_node), *(c for _, c in self.by_key)]
        return AUTO in choices

    def offset_for(
        self, name: str, mantissa_bits: int, key: str | None = None, calibrated: int | None = None
    ) -> int | None:
        """The ``offset`` attribute of node ``name`` (identity ``key``) at width ``m`` (None:
        none, the paper's); ``calibrated``: the node's ``auto`` offset.

        Raises:
            ValueError: the node's choice is ``auto`` and no calibrated offset is given.
        """
        choice = self.choice_for(name, key)
        if choice == PAPER:
            return None
        if choice == UNBIASED:
            return UNBIASED_OFFSETS[mantissa_bits]
        if choice == AUTO:
            if calibrated is None:
                raise ValueError(f"node {name}: offset auto needs calibration data")
            return calibrated
        return int(choice)


def effective_mantissa_bits(record: NodeRecord) -> int:
    """The ``m`` a converted node computes with: its attribute, else its type's width."""
    if record.decision.mantissa_bits is not None:
        return record.decision.mantissa_bits
    return TYPE_BITS[record.decision.element_type or "float32"]


class LMulOffsetPass(ir.passes.InPlacePass):
    """Set the ``offset`` attribute of freshly converted nodes (``converted``: the pairs the
    rewrite pass's ``on_convert`` hook saw). ``calibrated``: ``{node key: (offset, note)}``
    for the nodes whose choice is ``auto`` (:func:`lmul_onnx.calibration.calibrate`); the
    note becomes the record's reason. :meth:`annotate` then gives every record with its
    decision's ``offset`` filled in; with ``dry_run`` no node changes."""

    def __init__(
        self,
        options: OffsetOptions,
        converted: Sequence[tuple[ir.Node, NodeRecord]],
        *,
        dry_run: bool = False,
        calibrated: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.converted = list(converted)
        self.dry_run = dry_run
        self.calibrated = dict(calibrated or {})
        self.offsets: dict[int, int | None] = {}  # id(record) -> offset
        self.notes: dict[int, str] = {}  # id(record) -> how an auto offset was found

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node, record in self.converted:
            calibrated, note = self.calibrated.get(record.key, (None, ""))
            bits = effective_mantissa_bits(record)
            offset = self.options.offset_for(record.name, bits, record.key, calibrated)
            self.offsets[id(record)] = offset
            if note and self.options.choice_for(record.name, record.key) == AUTO:
                self.notes[id(record)] = note
            if offset is not None and not self.dry_run:
                node.attributes[OFFSET] = ir.AttrInt64(OFFSET, offset)
                modified = True
        return ir.passes.PassResult(model, modified)

    def annotate(self, records: Sequence[NodeRecord]) -> list[NodeRecord]:
        """``records`` with the chosen offsets in their decisions."""
        return [
            dataclasses.replace(
                r,
                decision=dataclasses.replace(
                    r.decision, offset=self.offsets[id(r)], reason=self.notes.get(id(r), r.decision.reason)
                ),
            )
            if id(r) in self.offsets
            else r
            for r in records
        ]
