"""Conversion plans: which nodes to convert, at which mantissa width, and why.

``lmul-onnx tune`` writes a plan; ``lmul-onnx convert --plan plan.json`` re-applies it, and
gives the same bytes as the model ``tune`` wrote. The file is JSON::

    {"format": "lmul-onnx-plan", "version": 1, "model": "...", "budget": {...},
     "summary": {...},
     "nodes": [{"key": "12", "node": "/encoder/layer.0/query/MatMul", "op_type": "MatMul",
                "convert": true, "mantissa_bits": 4, "offset": "unbiased", "reason": "...",
                "drift": {...}, "energy_pj": {...}}, ...]}

``key`` is the node's identity (:attr:`lmul_onnx.graph.NodeEntry.key`, its position) and
``node`` its qualified name, which must match (a plan is refused for another model);
``convert``, ``mantissa_bits`` (``null``: the type's own width) and ``offset`` (``null`` or
``"paper"``: the paper's; ``"unbiased"`` or an integer, as ``convert --offset`` takes them)
are what ``convert`` applies; everything else is the record of how the choice was made.
Nodes the plan does not convert stay exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmul_onnx.passes.offsets import OffsetOptions, parse_offset
from lmul_onnx.passes.selection import SelectionOptions

PLAN_FORMAT = "lmul-onnx-plan"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan file that cannot be used."""


@dataclass
class Plan:
    """A per-node conversion plan (see the module docstring)."""

    nodes: list[dict[str, Any]]
    model: str | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def converted(self) -> list[dict[str, Any]]:
        """The entries of the nodes to convert."""
        return [n for n in self.nodes if n["convert"]]

    def selection_options(self) -> SelectionOptions:
        """The selection that ``convert`` applies for this plan."""
        return SelectionOptions(
            plan=tuple((n["key"], n["node"], n.get("mantissa_bits")) for n in self.converted)
        )

    def offset_options(self) -> OffsetOptions:
        """The offsets that ``convert`` applies for this plan (the paper's where none)."""
        return OffsetOptions(
            by_key=tuple((n["key"], n["offset"]) for n in self.converted if n.get("offset") is not None)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "budget": self.budget,
            "summary": self.summary,
            "nodes": self.nodes,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON (atomically: a temporary file moved into place)."""
        from lmul_onnx.output_paths import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n", option="plan")


def _check_entry(index: int, entry: Any) -> dict[str, Any]:
    where = f"nodes[{index}]"
    if not isinstance(entry, dict):
        raise PlanError(f"{where} is not an object")
    if not isinstance(entry.get("key"), str) or not entry["key"]:
        raise PlanError(f"{where} has no node key ('key')")
    if not isinstance(entry.get("node"), str) or not entry["node"]:
        raise PlanError(f"{where} has no node name ('node')")
    if not isinstance(entry.get("convert"), bool):
        raise PlanError(f"{where} ({entry['node']}): 'convert' must be true or false")
    bits = entry.get("mantissa_bits")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 23):
        raise PlanError(f"{where} ({entry['node']}): 'mantissa_bits' must be null or an integer in 1..23")
    offset = entry.get("offset")
    if offset is not None:
        try:
            parse_offset(offset)
        except ValueError as error:
            raise PlanError(f"{where} ({entry['node']}): {error}") from None
    return entry


def plan_from_dict(data: Any, source: str = "plan") -> Plan:
    """Check a plan's structure and return it; :class:`PlanError` names the first problem."""
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanError(f'{source}: not an lmul-onnx plan (no "format": "{PLAN_FORMAT}")')
    if data.get("version") != PLAN_VERSION:
        raise PlanError(f"{source}: plan version {data.get('version')!r} is not supported (only 1)")
    if not isinstance(data.get("nodes"), list):
        raise PlanError(f"{source}: 'nodes' must be a list")
    try:
        nodes = [_check_entry(i, entry) for i, entry in enumerate(data["nodes"])]
    except PlanError as error:
        raise PlanError(f"{source}: {error}") from None
    seen: set[str] = set()
    for entry in nodes:
        if entry["key"] in seen:
            raise PlanError(f"{source}: node {entry['key']!r} ({entry['node']}) is listed twice")
        seen.add(entry["key"])
    return Plan(nodes, data.get("model"), data.get("budget") or {}, data.get("summary") or {})


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and check a plan file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanError(f"{path}: not a readable JSON plan ({error})") from None
    return plan_from_dict(data, str(path))
