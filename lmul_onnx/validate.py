"""``validate()``: run the original and the converted model on the same inputs and
measure the drift, per graph output, optionally per converted node and next to fp8 /
bf16 baselines. Polygraphy's comparator is the model; unlike Polygraphy, it loads the
``lmul`` custom-op library.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxruntime as ort

from lmul_onnx import graph
from lmul_onnx import inputs as model_inputs
from lmul_onnx.baselines import operand_rounded_model
from lmul_onnx.metrics import DriftAccumulator, looks_like_logits
from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD, check_model
from lmul_onnx.runtime import session_options

ModelSource = str | os.PathLike[str] | onnx.ModelProto
DEFAULT_ATOL = 1e-2
DEFAULT_RTOL = 1e-1


@dataclass
class ValidationReport:
    """Drift of every output (and, on request, every converted node and baseline)."""

    outputs: dict[str, dict[str, Any]]
    atol: dict[str, float]
    rtol: dict[str, float]
    samples: int
    seed: int
    min_cosine: float | None = None
    baselines: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(m["passed"] for m in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: ``{"passed", "outputs": {name: {metric: value}}, ...}``."""
        return {
            "passed": self.passed,
            "outputs": self.outputs,
            "baselines": self.baselines,
            "nodes": self.nodes,
            "samples": self.samples,
            "seed": self.seed,
            "atol": self.atol,
            "rtol": self.rtol,
            "min_cosine": self.min_cosine,
        }

    def format_table(self) -> str:
        """The report for people; its last line is PASSED or FAILED."""
        header = (
            f"{'output':<28} {'model':<10} {'cosine':>9} {'snr_db':>8} {'max_abs':>10} {'mean_abs':>10} "
            f"{'max_rel':>9} {'top1':>6} {'mismatch':>8}"
        )
        lines = [header]

        def row(name: str, label: str, m: dict[str, Any]) -> str:
            top1 = f"{m['top1_agreement']:.3f}" if "top1_agreement" in m else "-"
            return (
                f"{name[:28]:<28} {label:<10} {m['cosine']:>9.6f} {_num(m['snr_db']):>8} "
                f"{m['max_abs']:>10.3g} {m['mean_abs']:>10.3g} {m['max_rel']:>9.3g} {top1:>6} "
                f"{m['mismatches']:>8.2%}"
            )

        for name, metrics in self.outputs.items():
            lines.append(row(name, "lmul", metrics))
            for kind, outputs in self.baselines.items():
                lines.append(row(name, kind, outputs[name]))
        if self.nodes:
            lines.append("")
            lines.append(f"{'converted node':<40} {'op':<11} {'cosine':>9} {'snr_db':>8} {'max_abs':>10}")
            for node in self.nodes:
                if node["output"] is None:
                    lines.append(
                        f"{node['name'][-40:]:<40} {node['op_type']:<11} not measured: {node['reason']}"
                    )
                    continue
                lines.append(
                    f"{node['name'][-40:]:<40} {node['op_type']:<11} {node['cosine']:>9.6f} "
                    f"{_num(node['snr_db']):>8} {node['max_abs']:>10.3g}"
                )
        failing = [n for n, m in self.outputs.items() if not m["passed"]]
        lines.append("")
        lines.append("FAILED (" + ", ".join(failing) + " outside tolerance)" if failing else "PASSED")
        return "\n".join(lines)


def _num(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _session(
    model: ir.Model,
    path: Path | None,
    extra_outputs: Sequence[str] = (),
    threads: int | None = None,
    optimize: bool = True,
    modified: bool = False,
) -> ort.InferenceSession:
    """A session (custom ops registered) whose outputs include ``extra_outputs``.
    ``path`` is where ``model`` was read from: it is loaded from there unless
    ``modified`` or ``extra_outputs`` ask for the changed graph. The ``lmul`` domain's
    rules are checked first (:func:`lmul_onnx.ops.check_model`)."""
    check_model(model)
    options = session_options()
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not extra_outputs and not modified and path is not None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    proto = ir.to_proto(model)
    graph_outputs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in extra_outputs if n not in graph_outputs
    )
    if path is None:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # External weights are found relative to the model file: write the copy beside it.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        onnx.save(proto, temporary)
        return ort.InferenceSession(temporary, options, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(temporary)


def converted_nodes(original: ir.Model, converted: ir.Model) -> list[graph.NodeEntry]:
    """The ``lmul`` nodes of ``converted`` (wherever they sit), each checked against the
    node at the same place in ``original``: the standard op it replaces."""
    entries = [e for e in graph.walk(converted) if e.node.domain == DOMAIN]
    originals = graph.find(original, {e.key for e in entries})
    for entry in entries:
        source = originals.get(entry.key)
        expected = LMUL_TO_STANDARD.get(entry.node.op_type)
        if source is None or graph.standard_op(source.node) != expected or source.node.domain == DOMAIN:
            raise model_inputs.InputError(
                f"the converted model does not match the original: its node {entry.name} "
                f"({entry.node.op_type}) has no {expected} at the same place in the original"
            )
    return entries


def _node_row(entry: graph.NodeEntry, accumulators: Mapping[str, DriftAccumulator]) -> dict[str, Any]:
    """A per-node row: the drift at the node's output, or why it cannot be measured."""
    row: dict[str, Any] = {"name": entry.name, "op_type": entry.node.op_type, "key": entry.key}
    output = entry.node.outputs[0].name if entry.node.outputs else None
    if entry.in_main_graph and output in accumulators:
        return {**row, "output": output, **accumulators[output].result()}
    where = (
        f"inside function {graph.function_id(entry.function)}"
        if entry.function is not None
        else f"inside the body of {entry.parents[-1].op_type} {entry.name.rsplit('/', 2)[0]}"
    )
    return {**row, "output": None, "reason": f"{where}: its output is not a graph value"}


def _tolerance(default: float, per_output: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    unknown = sorted(set(per_output) - set(names))
    if unknown:
        raise model_inputs.InputError(
            f"tolerance given for unknown output(s) {unknown}; outputs are {list(names)}"
        )
    return {name: per_output.get(name, default) for name in names}


def validate(
    original: ModelSource,
    converted: ModelSource,
    *,
    inputs: str | os.PathLike[str] | None = None,
    samples: int = 1,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    atol_per_output: Mapping[str, float] | None = None,
    rtol_per_output: Mapping[str, float] | None = None,
    min_cosine: float | None = None,
    dims: Mapping[str, int] | None = None,
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    per_node: bool = False,
    compare: Sequence[str] = (),
    save_inputs: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Run both models on the same inputs and measure the drift of the converted one.

    Args:
        original, converted: paths or ``ModelProto``s.
        inputs: an ``.npz`` of inputs (keys ``NAME`` or ``I/NAME``); default: generated.
        samples, seed: how many generated samples, and the seed of the first.
        atol, rtol: numpy-allclose tolerances; ``*_per_output`` override them by name.
        min_cosine: if given, an output also fails when its cosine similarity to the
            original is below this.
        dims: values for symbolic dimensions; input_ranges: ``{name: (lo, hi)}``.
        per_node: also measure the drift at the output of every converted node.
        compare: baselines to report next to L-Mul (``fp8-e4m3``, ``fp8-e5m2``, ``bf16``).
        save_inputs: write the inputs used to this ``.npz``.
        threads: intra-op threads of both sessions (default: onnxruntime's).

    Raises:
        lmul_onnx.ModelLoadError: a model file is missing or unreadable.
        lmul_onnx.inputs.InputError: inputs that do not fit, unknown
            output names in the tolerances.
    """
    say = progress or (lambda message: None)
    original_ir, original_path = graph.load(original)
    converted_ir, converted_path = graph.load(converted)
    lmul_nodes = converted_nodes(original_ir, converted_ir)
    node_outputs = [n.node.outputs[0].name for n in lmul_nodes if n.in_main_graph] if per_node else []

    say("creating sessions")
    reference = _session(original_ir, original_path, node_outputs, threads)
    candidate = _session(converted_ir, converted_path, node_outputs, threads)
    output_names = [o.name for o in original_ir.graph.outputs]
    if output_names != [o.name for o in converted_ir.graph.outputs]:
        raise model_inputs.InputError("the two models have different graph outputs")
    specs = model_inputs.signature(reference)
    options = model_inputs.InputOptions(dims=dict(dims or {}), ranges=dict(input_ranges or {}), seed=seed)
    feeds_list = model_inputs.samples_for(specs, inputs, samples, options)
    if save_inputs is not None:
        model_inputs.save_npz(save_inputs, feeds_list)

    atols = _tolerance(atol, atol_per_output or {}, output_names)
    rtols = _tolerance(rtol, rtol_per_output or {}, output_names)
    accumulators = {n: DriftAccumulator(atols[n], rtols[n], min_cosine=min_cosine) for n in output_names}
    node_accumulators = {output: DriftAccumulator(0.0, 0.0) for output in node_outputs}
    original_types = graph.infer(original_ir) if compare else None
    baseline_sessions = {
        # Unoptimised: onnxruntime would fuse the Cast pair away as if it were lossless.
        kind: _session(
            operand_rounded_model(original_ir, [n.key for n in lmul_nodes], kind, original_types),
            original_path,
            (),
            threads,
            optimize=False,
            modified=True,
        )
        for kind in compare
    }
    baseline_accumulators = {
        kind: {n: DriftAccumulator(atols[n], rtols[n], min_cosine=min_cosine) for n in output_names}
        for kind in compare
    }
    fetch = output_names + [o for o in node_outputs if o not in output_names]
    for index, feeds in enumerate(feeds_list):
        say(f"sample {index + 1}/{len(feeds_list)}")
        try:
            want = dict(zip(fetch, reference.run(fetch, feeds), strict=True))
            got = dict(zip(fetch, candidate.run(fetch, feeds), strict=True))
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as error:
            raise model_inputs.InputError(f"the inputs do not fit the model: {error}") from None
        for name in output_names:
            accumulators[name].add(want[name], got[name], logits=looks_like_logits(name, want[name].shape))
        for output in node_outputs:
            node_accumulators[output].add(want[output], got[output])
        for kind, session in baseline_sessions.items():
            rounded = dict(zip(output_names, session.run(output_names, feeds), strict=True))
            for name in output_names:
                baseline_accumulators[kind][name].add(
                    want[name], rounded[name], logits=looks_like_logits(name, want[name].shape)
                )
        del want, got

    nodes = [_node_row(entry, node_accumulators) for entry in lmul_nodes] if per_node else []
    return ValidationReport(
        outputs={n: a.result() for n, a in accumulators.items()},
        atol=atols,
        rtol=rtols,
        samples=len(feeds_list),
        seed=seed,
        min_cosine=min_cosine,
        baselines={k: {n: a.result() for n, a in accs.items()} for k, accs in baseline_accumulators.items()},
        nodes=nodes,
    )
