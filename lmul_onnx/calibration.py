"""The ``auto`` offset (SPEC section 4): one offset per converted node, calibrated from data.

The ORIGINAL model runs once per calibration sample in onnxruntime, with the operands of
the nodes to convert exposed as extra graph outputs (the session code is validate's, the
inputs are an ``.npz`` or generated exactly as ``lmul-onnx validate`` generates them:
:mod:`lmul_onnx.inputs`). From each node's own operand samples one of two criteria gives
its offset:

* ``product`` (the one ``auto`` uses) -- the offset that zeroes the mean relative error of
  the node's products, :func:`lmul_onnx.offsets.zero_bias_offset` of its operand samples;
* ``output`` -- the offset that zeroes the bias of the node's output: with ``Y`` the exact
  output and ``Y(c)`` the L-Mul output at offset ``c``, the gain error
  ``<Y, Y(c) - Y> / <Y, Y>`` (how much L-Mul scales the output up or down along its own
  direction). It is measured with the native kernels on a grid of offsets (rows of the
  first operand subsampled) and its zero crossing interpolated.

``docs/accuracy.md`` compares the two on whole models; ``product`` served them as well or
better at a fraction of the cost, so it is the criterion of ``auto``.

Only nodes of the main graph can be calibrated this way (their operands are graph values);
nodes inside subgraphs (If/Loop/Scan bodies) and model-local functions get the data-free
``unbiased`` offset, and their record says so. Everything is deterministic: generated
inputs are seeded, and operand samples larger than :data:`MAX_SAMPLES` are subsampled with
a fixed seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from lmul_onnx import graph, numerics
from lmul_onnx import inputs as model_inputs
from lmul_onnx.offsets import UNBIASED_OFFSETS, zero_bias_offset
from lmul_onnx.ops import DOMAIN, DOMAIN_VERSION, MANTISSA_BITS, OFFSET, STANDARD_TO_LMUL
from lmul_onnx.runtime import InferenceSession, run
from lmul_onnx.validate import open_session, with_outputs  # custom ops, external data from its folder

__all__ = [
    "CRITERIA",
    "MAX_SAMPLES",
    "CalibrationError",
    "CalibrationOptions",
    "NodeCalibration",
    "calibrate",
]

MAX_SAMPLES = 1 << 16  # operand values kept per node and operand (criterion product)
OUTPUT_ROWS = 32  # rows of the first operand kept per sample (criterion output)
OUTPUT_GRID = np.arange(0, 33) << 16  # offsets 0, 1/128, ..., 1/4 (of 2^23) tried by criterion output
CRITERIA = ("product", "output")
_SUBSAMPLE_SEED = 0x5EED


class CalibrationError(model_inputs.InputError):
    """Calibration data that cannot serve (unreadable file, inputs that do not fit)."""


@dataclass(frozen=True)
class CalibrationOptions:
    """Where the calibration inputs come from: ``inputs`` (an ``.npz`` as validate reads
    it) or ``samples`` generated ones (seeded, ``dims`` / ``ranges`` as in validate)."""

    inputs: str | os.PathLike[str] | None = None
    samples: int = 1
    seed: int = 0
    dims: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    criterion: str = "product"

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"calibration criterion must be one of {', '.join(CRITERIA)}")
        if self.samples < 1:
            raise ValueError("calibration needs at least one sample")


@dataclass(frozen=True)
class NodeCalibration:
    """The calibrated offset of one node and how it was found."""

    offset: int
    note: str  # e.g. "auto: product bias zeroed on 2 sample(s)" or why unbiased stands in


@dataclass
class _Operands:
    """What one node's calibration accumulates over the samples."""

    first: list[np.ndarray] = field(default_factory=list)
    second: list[np.ndarray] = field(default_factory=list)
    gain_numerator: np.ndarray = field(default_factory=lambda: np.zeros(len(OUTPUT_GRID)))
    gain_denominator: float = 0.0


def _subsample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.asarray(values).ravel()
    if flat.size <= MAX_SAMPLES:
        return flat.copy()
    return flat[np.sort(rng.choice(flat.size, MAX_SAMPLES, replace=False))]


def calibration_feeds(session: object, options: CalibrationOptions) -> list[dict[str, np.ndarray]]:
    """The calibration inputs of a session of the original model."""
    specs = model_inputs.signature(session)
    try:
        return model_inputs.samples_for(
            specs,
            options.inputs,
            options.samples,
            model_inputs.InputOptions(
                dims=dict(options.dims), ranges=dict(options.ranges), seed=options.seed
            ),
        )
    except model_inputs.InputError as error:
        raise CalibrationError(f"calibration: {error}") from None


def _output_gain_model(node: ir.Node, operands: Sequence[np.ndarray], mantissa_bits: int) -> onnx.ModelProto:
    """A model computing ``node`` exactly and as L-Mul at every offset of :data:`OUTPUT_GRID`."""
    names = [f"x{i}" for i in range(len(operands))]
    inputs = [
        onnx.helper.make_tensor_value_info(n, ir.DataType.from_numpy(v.dtype).value, v.shape)
        for n, v in zip(names, operands, strict=True)
    ]
    attributes = {a.name: a.value for a in node.attributes.values() if a.name not in (MANTISSA_BITS, OFFSET)}
    nodes = [onnx.helper.make_node(node.op_type, names, ["exact"], **attributes)]
    outputs = ["exact"]
    for index, offset in enumerate(OUTPUT_GRID):
        outputs.append(f"y{index}")
        nodes.append(
            onnx.helper.make_node(
                STANDARD_TO_LMUL[node.op_type],
                names,
                [outputs[-1]],
                domain=DOMAIN,
                mantissa_bits=mantissa_bits,
                offset=int(offset),
                **attributes,
            )
        )
    dtype = inputs[0].type.tensor_type.elem_type
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes, "gain", inputs, [onnx.helper.make_tensor_value_info(o, dtype, None) for o in outputs]
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )
    model.ir_version = 8
    return model


def _rows(node: ir.Node, operands: list[np.ndarray]) -> list[np.ndarray]:
    """``operands`` with the first operand's rows (and a Gemm's matching C rows) cut to
    :data:`OUTPUT_ROWS`: the output criterion's cost bound."""
    first = operands[0]
    if node.op_type == "MatMul" and first.ndim >= 2 and first.shape[-2] > OUTPUT_ROWS:
        operands[0] = first[..., :OUTPUT_ROWS, :]
    elif node.op_type == "Gemm":
        attributes = {a.name: a.value for a in node.attributes.values()}
        axis = 1 if attributes.get("transA", 0) else 0
        rows = first.shape[axis]
        if rows > OUTPUT_ROWS:
            operands[0] = first[:, :OUTPUT_ROWS] if axis else first[:OUTPUT_ROWS]
            if len(operands) > 2 and operands[2].ndim == 2 and operands[2].shape[0] == rows:
                operands[2] = operands[2][:OUTPUT_ROWS]
    return operands


def _accumulate_gain(node: ir.Node, operands: list[np.ndarray], mantissa_bits: int, into: _Operands) -> None:
    operands = _rows(node, [np.ascontiguousarray(v) for v in operands])
    model = _output_gain_model(node, operands, mantissa_bits)
    session = InferenceSession(model.SerializeToString())
    results = run(session, {f"x{i}": v for i, v in enumerate(operands)})
    exact = results[0].astype(np.float64).ravel()
    finite = np.isfinite(exact)
    for index, approximate in enumerate(results[1:]):
        approximate = approximate.astype(np.float64).ravel()
        keep = finite & np.isfinite(approximate)
        into.gain_numerator[index] += float(exact[keep] @ (approximate[keep] - exact[keep]))
    into.gain_denominator += float(exact[finite] @ exact[finite])


def _gain_zero(collected: _Operands) -> int:
    """The offset where the interpolated gain error crosses zero (clamped to the grid)."""
    if collected.gain_denominator <= 0:
        raise ValueError("the node's exact output is zero on every calibration sample")
    gain = collected.gain_numerator / collected.gain_denominator
    above = np.nonzero(gain >= 0)[0]
    if above.size == 0:
        return int(OUTPUT_GRID[-1])
    upper = int(above[0])
    if upper == 0:
        return 0
    low, high = gain[upper - 1], gain[upper]
    offset = OUTPUT_GRID[upper - 1] + (OUTPUT_GRID[upper] - OUTPUT_GRID[upper - 1]) * (-low / (high - low))
    return min(round(float(offset)), numerics.OFFSET_LIMIT - 1)


def _operand_values(
    node: ir.Node, fetched: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray] | None:
    values = []
    for value in node.inputs:
        if value is None:
            return None
        tensor = value.const_value
        if tensor is not None:
            values.append(tensor.numpy())
        elif value.name in feeds:
            values.append(np.asarray(feeds[value.name]))
        elif value.name in fetched:
            values.append(fetched[value.name])
        else:
            return None
    return values


def calibrate(
    model: ir.Model,
    path: Path | None,
    nodes: Mapping[str, int],
    options: CalibrationOptions,
) -> dict[str, NodeCalibration]:
    """Calibrated offsets of ``nodes`` (``{key: m}``, :attr:`lmul_onnx.graph.NodeEntry.key`
    of the original model's nodes to convert, with the width each will compute at).

    ``model`` is the ORIGINAL model (``path``: where it was read from, for external
    weights); it is not changed.

    Raises:
        CalibrationError: the calibration inputs cannot be read or do not fit the model.
    """
    entries = graph.find(model, set(nodes))
    result: dict[str, NodeCalibration] = {}
    main = {}
    for key, bits in nodes.items():
        entry = entries[key]
        if entry.in_main_graph:
            main[key] = entry
            continue
        where = (
            f"function {graph.function_id(entry.function)}"
            if entry.function is not None
            else f"a {entry.parents[-1].op_type} body"
        )
        result[key] = NodeCalibration(
            UNBIASED_OFFSETS[bits], f"auto: inside {where}, operands not observable: unbiased offset"
        )
    if not main:
        return result
    constant_or_input = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    exposed = sorted(
        {
            value.name
            for entry in main.values()
            for value in entry.node.inputs[:3]
            if value is not None and value.const_value is None and value.name not in constant_or_input
        }
    )
    folder = path.resolve().parent if path is not None else None
    try:
        session = open_session(with_outputs(ir.to_proto(model), exposed), folder, "the original model")
    except model_inputs.InputError as error:  # a model onnxruntime cannot load
        raise CalibrationError(f"calibration: {error}") from None
    feeds_list = calibration_feeds(session, options)
    rng = np.random.default_rng(_SUBSAMPLE_SEED)
    collected = {key: _Operands() for key in main}
    for feeds in feeds_list:
        try:
            fetched = dict(zip(exposed, run(session, feeds, exposed), strict=True)) if exposed else {}
        except Exception as error:  # onnxruntime's errors for inputs that do not fit
            raise CalibrationError(f"calibration: the inputs do not fit the model: {error}") from None
        for key, entry in main.items():
            operands = _operand_values(entry.node, fetched, feeds)
            if operands is None:
                continue
            if options.criterion == "product":
                collected[key].first.append(_subsample(operands[0], rng))
                collected[key].second.append(_subsample(operands[1], rng))
            else:
                _accumulate_gain(entry.node, operands, nodes[key], collected[key])
        del fetched
    count = len(feeds_list)
    for key in main:
        bits = nodes[key]
        data = collected[key]
        try:
            if options.criterion == "product":
                if not data.first:
                    raise ValueError("operands not observable")
                first = np.concatenate(data.first)
                second = np.concatenate(data.second)
                offset = zero_bias_offset(first, second, bits)
                note = f"auto: product bias zeroed on {count} sample(s)"
            else:
                offset = _gain_zero(data)
                note = f"auto: output bias zeroed on {count} sample(s)"
        except ValueError as error:
            offset, note = UNBIASED_OFFSETS[bits], f"auto: {error}: unbiased offset"
        result[key] = NodeCalibration(offset, note)
    return result
