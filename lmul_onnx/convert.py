"""``convert()``: load a model, rewrite its products into L-Mul, save it safely.

The model is read with onnx-ir, which memory-maps external weights, so a conversion
never holds a large model twice; the output is written to a temporary folder beside its
destination and moved into place, so a failed run leaves nothing half-written, and the
input is never modified.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from lmul_onnx import energy, graph
from lmul_onnx.calibration import CalibrationOptions, calibrate
from lmul_onnx.graph import ModelInput, ModelLoadError
from lmul_onnx.ops import DOMAIN, SUPPORTED_OPS
from lmul_onnx.output_paths import check_output, staged_files
from lmul_onnx.passes.fold_pad import FoldPadPass
from lmul_onnx.passes.offsets import (
    AUTO,
    Choice,
    LMulOffsetPass,
    OffsetOptions,
    describe_offset,
    effective_mantissa_bits,
    offset_in_effect,
)
from lmul_onnx.passes.rewrite import LMulRewritePass, NodeRecord
from lmul_onnx.passes.selection import Scope, SelectionOptions
from lmul_onnx.plan import Plan, load_plan
from lmul_onnx.portable import make_portable

__all__ = ["ConversionReport", "ModelLoadError", "convert", "convert_file", "convert_model"]


@dataclass
class ConversionReport:
    """What a conversion did: every candidate node and, per op type, the counts."""

    input_path: str | None
    output_path: str | None
    dry_run: bool
    nodes: list[NodeRecord] = field(default_factory=list)
    energy: dict[str, Any] | None = None  # lmul_onnx.energy.count of the result (not on dry runs)
    written: list[str] = field(default_factory=list)
    portable: str | None = None  # what --portable changed (lmul_onnx.portable)
    folded_pads: list[str] = field(default_factory=list)  # Pad nodes folded into LMulConv pads
    # bytes of the written model's weights that converted nodes read and that stay embedded
    # in the .onnx file (embedded_weight_bytes; 0 on dry runs)
    embedded_weight_bytes: int = 0

    @property
    def converted(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.decision.convert]

    def per_op(self) -> dict[str, dict[str, Any]]:
        """``{op: {"found", "converted", "skipped": {reason: count}}}`` for each op type."""
        table: dict[str, dict[str, Any]] = {}
        for record in self.nodes:
            entry = table.setdefault(record.op_type, {"found": 0, "converted": 0, "skipped": Counter()})
            entry["found"] += 1
            if record.decision.convert:
                entry["converted"] += 1
            else:
                entry["skipped"][record.decision.reason] += 1
        return {op: {**e, "skipped": dict(e["skipped"])} for op, e in table.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the ``--json`` output of ``lmul-onnx convert``)."""
        return {
            "input": self.input_path,
            "output": self.output_path,
            "written": self.written,
            "dry_run": self.dry_run,
            "converted": len(self.converted),
            "portable": self.portable,
            "folded_pads": self.folded_pads,
            "embedded_weight_bytes": self.embedded_weight_bytes,
            "ops": self.per_op(),
            "offsets": self.offsets(),
            "nodes": [
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "location": n.location,
                    "converted": n.decision.convert,
                    "new_op_type": n.new_op_type,
                    "element_type": n.decision.element_type,
                    "mantissa_bits": n.decision.mantissa_bits,
                    "offset": n.decision.offset,
                    "reason": n.decision.reason or None,
                    "key": n.key,
                }
                for n in self.nodes
            ],
        }

    def offsets(self) -> list[dict[str, Any]]:
        """The offsets of the converted nodes, one entry per (m, offset) with its node count:
        ``{"mantissa_bits", "offset" (the attribute; null = the paper's), "value" (the
        constant in effect), "choice" ("paper"/"unbiased"/"value"/"auto": calibrated), "nodes"}``."""
        counts = Counter(
            (effective_mantissa_bits(n), n.decision.offset, n.decision.reason.startswith(f"{AUTO}:"))
            for n in self.converted
        )
        entries = []
        for (bits, offset, auto), count in sorted(
            counts.items(), key=lambda item: (item[0][0], item[0][1] or -1, item[0][2])
        ):
            choice, value = offset_in_effect(offset, bits)
            entries.append(
                {
                    "mantissa_bits": bits,
                    "offset": offset,
                    "value": value,
                    "choice": AUTO if auto else choice,
                    "nodes": count,
                }
            )
        return entries

    def format_table(self) -> str:
        """A summary for people: per op type, found / converted / skipped with reasons."""
        lines = [f"{'op':<12} {'found':>6} {'converted':>10}  skipped"]
        for op, entry in sorted(self.per_op().items()):
            skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(entry["skipped"].items()))
            lines.append(f"{op:<12} {entry['found']:>6} {entry['converted']:>10}  {skipped or '-'}")
        verb = "would convert" if self.dry_run else "converted"
        lines.append(f"{verb} {len(self.converted)} of {len(self.nodes)} candidate nodes")
        if self.folded_pads:
            verb = "would fold" if self.dry_run else "folded"
            lines.append(f"{verb} {len(self.folded_pads)} Pad node(s) into the LMulConv nodes they feed")
        calibrated: dict[int, list[int]] = {}
        for entry in self.offsets():
            if entry["choice"] == AUTO:
                calibrated.setdefault(entry["mantissa_bits"], []).extend([entry["value"]] * entry["nodes"])
                continue
            described = describe_offset(entry["offset"], entry["mantissa_bits"])
            lines.append(f"offset m={entry['mantissa_bits']}: {described} on {entry['nodes']} node(s)")
        for bits, values in sorted(calibrated.items()):
            values.sort()
            low, middle, high = (v / (1 << 23) for v in (values[0], values[len(values) // 2], values[-1]))
            lines.append(
                f"offset m={bits}: auto (calibrated) {low:.5f}..{high:.5f}, median {middle:.5f}, "
                f"on {len(values)} node(s)"
            )
        return "\n".join(lines)


def referenced_files(model: ir.Model, base: Path) -> set[Path]:
    """The external-data files the model reads (initializers of every graph and subgraph,
    tensor attributes of every node, functions included), as absolute paths."""
    files: set[Path] = set()

    def note(tensor: object) -> None:
        if isinstance(tensor, ir.ExternalTensor):
            files.add(Path(os.path.abspath(Path(tensor.base_dir or base) / tensor.location)))

    for each in model.graphs():
        for value in each.initializers.values():
            note(value.const_value)
    for entry in graph.walk(model):
        for attribute in entry.node.attributes.values():
            if isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.TENSOR:
                note(attribute.value)
            elif isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.TENSORS:
                for tensor in attribute.value:
                    note(tensor)
    return files


def embedded_weight_bytes(model: ir.Model) -> int:
    """Bytes of the initializers that ``lmul`` nodes read (every graph and function) and
    that are embedded in the model, not in an external-data file. When such a model runs,
    onnxruntime keeps its copy of each beside the kernels' packed one (custom ops get no
    pre-packing to release it); external data it memory-maps instead."""
    seen: set[int] = set()
    total = 0
    for entry in graph.walk(model):
        if entry.node.domain != DOMAIN:
            continue
        for value in entry.node.inputs:
            if value is None or id(value) in seen or not value.is_initializer():
                continue
            seen.add(id(value))
            tensor = value.const_value
            if tensor is not None and not isinstance(tensor, ir.ExternalTensor):
                total += tensor.nbytes
    return total


def output_files(
    output: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    reads_from: Iterable[Path] = (),
    overwrite: bool = False,
    external_data: bool = False,
) -> list[Path]:
    """The files a conversion writes: the model and, when the input has external data
    or ``external_data`` asks for it, ``<output>.data`` beside it; each checked by
    :func:`output_paths.check_output` against the input and every file it reads."""
    external = set(reads_from)
    protected = [(Path(p), "the external data of the input model") for p in sorted(external)]
    if input_path is not None:
        protected.insert(0, (Path(os.path.abspath(input_path)), "the input model"))
    model_file = check_output(output, protected=protected, overwrite=overwrite)
    files = [model_file]
    if external or external_data:
        data_file = model_file.with_name(f"{model_file.name}.data")
        files.append(
            check_output(data_file, protected=protected, overwrite=overwrite, option="external data")
        )
    return files


def save_model(
    model: ir.Model,
    output: str | os.PathLike[str],
    *,
    reads_from: Iterable[Path] = (),
    overwrite: bool = True,
    input_path: str | os.PathLike[str] | None = None,
    external_data: bool = False,
) -> list[Path]:
    """Write ``model`` atomically; return the files written. Weights stored externally in
    the input (every weight, with ``external_data``) go to a new external-data file
    ``<output name>.data``, which must not be one the model reads from; nothing is
    written when a check fails."""
    files = output_files(
        output, input_path=input_path, reads_from=reads_from, overwrite=overwrite, external_data=external_data
    )
    data_name = files[1].name if len(files) > 1 else None
    # The data file is moved into place before the model that names it.
    with staged_files(files[::-1]) as staged:
        ir.save(model, staged[files[0]], external_data=data_name)
    return files


def default_output_path(input_path: str | os.PathLike[str]) -> Path:
    """``<dir>/<stem>.lmul.onnx`` beside the input."""
    path = Path(input_path)
    return path.with_name(f"{path.stem}.lmul.onnx")


def convert_model(
    model: ir.Model,
    options: SelectionOptions,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    types: graph.Types | None = None,
    offsets: OffsetOptions | None = None,
    calibration: CalibrationOptions | None = None,
    path: Path | None = None,
    fold_pads: bool = False,
    folded: list[str] | None = None,
) -> list[NodeRecord]:
    """Rewrite ``model`` in place (unless ``dry_run``); return the per-node records.
    ``fold_pads``: fold zero ``Pad`` nodes into the ``LMulConv`` nodes they feed
    (:mod:`lmul_onnx.passes.fold_pad`; the same values, faster), which removes nodes (an
    opt-in exception to SPEC section 3's "keeps node names"); their names are appended to
    ``folded`` when given.
    ``types``: the model's :func:`lmul_onnx.graph.infer` result (inferred when not given).
    Where an offset choice is ``auto``, the unchanged model is first run on the
    ``calibration`` inputs (default: one generated sample) to calibrate the nodes that
    will be converted (:mod:`lmul_onnx.calibration`); ``path`` is where ``model`` was
    read from (its external weights are found from there)."""
    offsets = offsets or OffsetOptions()
    calibrated = None
    if offsets.uses_auto:
        types = types if types is not None else graph.infer(model)
        probe = LMulRewritePass(options, dry_run=True, types=types)
        probe(model)
        nodes = {
            r.key: effective_mantissa_bits(r)
            for r in probe.result.converted
            if offsets.choice_for(r.name, r.key) == AUTO
        }
        found = calibrate(model, path, nodes, calibration or CalibrationOptions())
        calibrated = {key: (c.offset, c.note) for key, c in found.items()}
    converted: list[tuple[ir.Node, NodeRecord]] = []
    rewrite = LMulRewritePass(
        options,
        dry_run=dry_run,
        progress=progress,
        types=types,
        on_convert=lambda node, record: converted.append((node, record)),
    )
    rewrite(model)
    offset_pass = LMulOffsetPass(offsets, converted, dry_run=dry_run, calibrated=calibrated)
    offset_pass(model)
    if fold_pads:
        convs = [node for node, record in converted if record.new_op_type == "LMulConv"]
        fold = FoldPadPass(convs, dry_run=dry_run)
        fold(model)
        if folded is not None:
            folded.extend(fold.result.folded)
    return offset_pass.annotate(rewrite.result.records)


def convert_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    options: SelectionOptions,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    dims: Mapping[str, int] | None = None,
    overwrite: bool = False,
    offsets: OffsetOptions | None = None,
    calibration: CalibrationOptions | None = None,
    portable: bool = False,
    external_data: bool = False,
    fold_pads: bool = False,
) -> ConversionReport:
    """Convert a model file into another file; the function behind ``lmul-onnx convert``.

    The input is checked first (:func:`lmul_onnx.graph.load`), then the output paths
    (see :mod:`lmul_onnx.output_paths`: never the input or a file it reads; an existing
    file is replaced only with ``overwrite``) and the names in ``dims``; its types and
    shapes are inferred once (``dims`` binds symbolic input dimensions) and serve both
    the selection and the energy estimate of the result (``report.energy``, not on dry
    runs). ``report.written`` names the files written.
    ``calibration``: the inputs of ``auto`` offsets (see :func:`convert_model`).
    ``portable`` adds the standard-op bodies of :mod:`lmul_onnx.portable`.
    ``external_data`` writes the weights to ``<output>.data`` even when the input
    embeds them (see :func:`convert`). ``fold_pads``: see :func:`convert_model`.
    """
    model, model_path = graph.load(input_path)
    source = os.fspath(input_path)
    target = Path(output_path) if output_path is not None else default_output_path(input_path)
    reads_from = referenced_files(model, Path(input_path).parent)
    if not dry_run:
        output_files(
            target,
            input_path=input_path,
            reads_from=reads_from,
            overwrite=overwrite,
            external_data=external_data,
        )
    energy.unbound_dims(model, dims or {})
    types = graph.infer(model, dims or {})
    folded: list[str] = []
    records = convert_model(
        model,
        options,
        dry_run=dry_run,
        progress=progress,
        types=types,
        offsets=offsets,
        calibration=calibration,
        path=model_path,
        fold_pads=fold_pads,
        folded=folded,
    )
    report = ConversionReport(source, None if dry_run else str(target), dry_run, records, folded_pads=folded)
    if not dry_run:
        report.energy = energy.count(model, types, dims=dims)
        if portable:
            model, added = make_portable(model, base_dir=Path(input_path).parent)
            report.portable = added.describe()
        if not external_data:  # (with it, every weight goes to <output>.data)
            report.embedded_weight_bytes = embedded_weight_bytes(model)
        written = save_model(
            model,
            target,
            reads_from=reads_from,
            overwrite=overwrite,
            input_path=input_path,
            external_data=external_data,
        )
        report.written = [str(path) for path in written]
    return report


def selection_options(
    *,
    op_types_to_quantize: Sequence[str] = SUPPORTED_OPS,
    scope: str | Scope = Scope.ALL,
    nodes_to_include: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
    mantissa_bits: int | None = None,
    mantissa_bits_for: dict[str, int] | None = None,
    every_product: bool = False,
) -> SelectionOptions:
    """The :class:`SelectionOptions` of :func:`convert`'s keyword arguments (same meanings)."""
    return SelectionOptions(
        ops=tuple(op_types_to_quantize),
        scope=Scope(scope),
        include=tuple(nodes_to_include),
        exclude=tuple(nodes_to_exclude),
        mantissa_bits=mantissa_bits,
        mantissa_bits_for=tuple((mantissa_bits_for or {}).items()),
        every_product=every_product,
    )


def convert(
    model: ModelInput,
    output_path: str | os.PathLike[str] | None = None,
    *,
    op_types_to_quantize: Sequence[str] = SUPPORTED_OPS,
    scope: str | Scope = Scope.ALL,
    nodes_to_include: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
    mantissa_bits: int | None = None,
    mantissa_bits_for: dict[str, int] | None = None,
    overwrite: bool = True,
    offset: Choice | float = "paper",
    offset_for: dict[str, Choice | float] | None = None,
    calibration: CalibrationOptions | None = None,
    every_product: bool = False,
    plan: str | os.PathLike[str] | Plan | None = None,
    portable: bool = False,
    external_data: bool = False,
    fold_pads: bool = False,
) -> onnx.ModelProto:
    """Rewrite the MatMul / Gemm / Mul / Conv / ConvTranspose nodes of a model into L-Mul ops.

    Args:
        model: a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (never modified
            when it is a path or a ``ModelProto``).
        output_path: where to write the result (atomically); ``None`` writes nothing.
        op_types_to_quantize: the standard op types to rewrite (named as in
            ``onnxruntime.quantization.quantize_dynamic``); default all five.
        scope: ``"all"``, ``"attention"`` (products of two activations) or
            ``"weights"`` (products with a constant operand).
        nodes_to_include: regular expressions; when given, only matching node names.
        nodes_to_exclude: regular expressions of node names to leave alone.
        mantissa_bits: operand mantissa width for every converted node (``None``: the
            tensor type's full width).
        mantissa_bits_for: per-node overrides ``{regex: bits}``; the first match wins.
        overwrite: replace an existing output file (the CLI asks for ``--overwrite``).
        offset: the SPEC section 4 offset of every converted node: ``"paper"`` (the
            default: no attribute), ``"unbiased"`` (the data-free constant of
            :data:`lmul_onnx.offsets.UNBIASED_OFFSETS` for the node's ``m``),
            ``"auto"`` (calibrated per node from ``calibration``'s inputs:
            :mod:`lmul_onnx.calibration`), an int (the attribute, 0 <= offset < 2^23)
            or a float fraction in [0, 1).
        offset_for: per-node overrides ``{regex: choice}``; the first match wins.
        calibration: the inputs ``auto`` calibrates on: an ``.npz`` or seeded generated
            samples (:class:`lmul_onnx.calibration.CalibrationOptions`); default one
            generated sample, as ``validate`` generates it.
        portable: also write each ``lmul`` op's body as a model-local function of standard
            ops (:mod:`lmul_onnx.portable`), so that onnxruntime >= 1.30 runs the model
            without the custom-op library.
        every_product: also convert products whose constant operand is exactly 0, ±2^k or
            a 0/1 mask (left exact by default: L-Mul would only add error to them).
        plan: a plan from :func:`lmul_onnx.tune` (a path or a ``Plan``): convert exactly
            the nodes it converts, at its widths and offsets; the selection and offset
            options are then ignored.
        external_data: write the weights to an external-data file ``<output>.data``
            even when the input embeds them (inputs with external data always get one).
            onnxruntime memory-maps such weights, and the ``lmul`` kernels, which keep
            their own packed copy, let the pages of onnxruntime's copy be reclaimed:
            the converted model then takes less resident memory.
        fold_pads: fold each zero ``Pad`` that feeds only converted ``LMulConv`` nodes
            into their ``pads`` attribute and remove it (:mod:`lmul_onnx.passes.fold_pad`):
            bit-identical outputs, one copy of the activations fewer. Off by default:
            SPEC section 3 has a rewritten model keep every node name, and this removes
            the folded ``Pad`` nodes.

    Returns:
        The converted model as an ``onnx.ModelProto``. Models with external data are
        best converted with ``output_path`` (the result then keeps its weights
        external).

    Raises:
        ModelLoadError: the input cannot be read as ONNX, or is a model onnxruntime
            would refuse (see :func:`lmul_onnx.graph.check`).
        ValueError: an invalid option.
        lmul_onnx.output_paths.OutputPathError: an output path that is the input, a file
            the input reads, a symbolic link, or (without ``overwrite``) an existing file.
        lmul_onnx.calibration.CalibrationError: calibration inputs that cannot be read
            or do not fit the model (a ``ValueError``).
        PortableError: ``portable`` and the model cannot hold the portable bodies.
        lmul_onnx.plan.PlanError: an unreadable plan.
    """
    if plan is not None:
        loaded = plan if isinstance(plan, Plan) else load_plan(plan)
        options, offsets = loaded.selection_options(), loaded.offset_options()
    else:
        options = selection_options(
            op_types_to_quantize=op_types_to_quantize,
            scope=scope,
            nodes_to_include=nodes_to_include,
            nodes_to_exclude=nodes_to_exclude,
            mantissa_bits=mantissa_bits,
            mantissa_bits_for=mantissa_bits_for,
            every_product=every_product,
        )
        offsets = OffsetOptions(offset, tuple((offset_for or {}).items()))
    if isinstance(model, (str, os.PathLike)) and output_path is not None:
        convert_file(
            model,
            output_path,
            options,
            offsets=offsets,
            calibration=calibration,
            overwrite=overwrite,
            portable=portable,
            external_data=external_data,
            fold_pads=fold_pads,
        )
        return onnx.load(os.fspath(output_path), load_external_data=False)
    ir_model, ir_path = graph.load(model)  # a ModelProto is deserialised, so it stays untouched
    convert_model(
        ir_model, options, offsets=offsets, calibration=calibration, path=ir_path, fold_pads=fold_pads
    )
    if portable:
        ir_model, _ = make_portable(ir_model)
    if output_path is not None:
        save_model(ir_model, output_path, overwrite=overwrite, external_data=external_data)
    return ir.to_proto(ir_model)
