"""``validate()``: run the original and the converted model on the same inputs and
measure the drift, per graph output, optionally per converted node and next to fp8 /
bf16 baselines. Polygraphy's comparator is the model; unlike Polygraphy, it loads the
``lmul`` custom-op library.

Models are handed to onnxruntime as bytes (with their external-data folder named in the
session options), so nothing is ever written beside the user's models. Inputs are made
(or read) one sample at a time.

Outcomes: a model onnxruntime cannot load, or an original that fails on the inputs, is
bad input (:class:`ValidationInputError`); a converted model that fails at run time, or
whose output shapes differ from the original's, is a FAILED report naming what failed
and why — and when the converted model produces NaN/Inf where the original does not,
the report names the first converted node, in graph order, whose output holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from lmul_onnx import graph
from lmul_onnx import inputs as model_inputs
from lmul_onnx.baselines import operand_rounded_model
from lmul_onnx.choices import DEFAULT_ATOL, DEFAULT_RTOL
from lmul_onnx.metrics import DriftAccumulator, looks_like_logits
from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD, DomainError, check_model
from lmul_onnx.output_paths import check_output, staged_files
from lmul_onnx.runtime import session_options

ModelSource = str | os.PathLike[str] | onnx.ModelProto
Progress = Callable[..., None]
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
# Per-node entries are diagnostics, not gates: these metrics, no tolerance, no pass/fail.
NAME_WIDTH = 64  # node names longer than this are cut, keeping their end, after an ellipsis
NODE_METRICS = ("max_abs", "mean_abs", "rmse", "snr_db", "cosine", "nan_mismatches", "new_nonfinite")


class ValidationInputError(model_inputs.InputError):
    """A model onnxruntime cannot load, or inputs that do not fit: exit code 2."""


@dataclass
class ValidationReport:
    """Drift of every output (and, on request, every converted node and baseline).

    ``failure`` says why the converted model could not be compared at all (it failed at
    run time); ``nonfinite_node`` names the first converted node whose output holds
    NaN/Inf where the original's does not.
    """

    outputs: dict[str, dict[str, Any]]
    atol: dict[str, float]
    rtol: dict[str, float]
    samples: int
    seed: int
    min_cosine: float | None = None
    baselines: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    nonfinite_node: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None and all(m["passed"] for m in self.outputs.values())

    def sort_nodes(self, order: str) -> None:
        """``graph`` (as converted) or ``worst``: lowest SNR first, NaN first of all, ties
        by lower cosine."""
        if order == "worst":
            self.nodes.sort(key=_worst_first)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: ``{"passed", "outputs": {name: {metric: value}}, ...}``."""
        return {
            "passed": self.passed,
            "failure": self.failure,
            "nonfinite_node": self.nonfinite_node,
            "outputs": self.outputs,
            "baselines": self.baselines,
            "nodes": self.nodes,
            "inputs": self.inputs,
            "samples": self.samples,
            "seed": self.seed,
            "atol": self.atol,
            "rtol": self.rtol,
            "min_cosine": self.min_cosine,
        }

    def format_table(self) -> str:
        """The report for people; its last line is PASSED or FAILED."""
        lines = []
        if self.inputs.get("generated"):
            described = []
            for name, entry in self.inputs["generated"].items():
                shape = "x".join(map(str, entry["shape"])) or "scalar"
                note = f" (default {', '.join(entry['defaults'])})" if entry["defaults"] else ""
                described.append(f"{name} {entry['dtype']}[{shape}] {entry['values']}{note}")
            lines.append("inputs: " + "; ".join(described))
        elif self.inputs.get("file"):
            lines.append(f"inputs: {self.inputs['file']}")
        lines.append(
            f"{'output':<28} {'model':<10} {'cosine':>9} {'snr_db':>8} {'max_abs':>10} {'mean_abs':>10} "
            f"{'max_rel':>9} {'top1':>6} {'mismatch':>8}"
        )

        def row(name: str, label: str, m: dict[str, Any]) -> str:
            top1 = f"{m['top1_agreement']:.3f}" if "top1_agreement" in m else "-"
            return (
                f"{_fit(name, 28):<28} {label:<10} {_num(m['cosine'], 6):>9} {_num(m['snr_db']):>8} "
                f"{m['max_abs']:>10.3g} {m['mean_abs']:>10.3g} {m['max_rel']:>9.3g} {top1:>6} "
                f"{m['mismatches']:>8.2%}"
            )

        for name, metrics in self.outputs.items():
            dtype = metrics.get("dtype") or "float32"
            label = name if dtype.startswith(("float", "bfloat")) else f"{name} ({dtype})"
            if self.failure and (metrics.get("error") or "").startswith("not compared"):
                lines.append(f"{_fit(label, 28):<28} {'lmul':<10} {metrics['error']}")
                continue
            lines.append(row(label, "lmul", metrics))
            for kind, outputs in self.baselines.items():
                lines.append(row(label, kind, outputs[name]))
        if self.nodes:
            measured = [n for n in self.nodes if n["output"] is not None]
            kinds = [k for k in self.baselines if measured and f"snr_db_{k}" in measured[0]]
            width = min(max(len("converted node"), *(len(n["name"]) for n in self.nodes)), NAME_WIDTH)
            lines.append("")
            lines.append(
                f"{'converted node':<{width}} {'op':<11} {'cosine':>9} {'snr_db':>8} {'max_abs':>10}"
                + "".join(f" {('snr ' + k)[:13]:>13}" for k in kinds)
            )
            for node in self.nodes:
                if node["output"] is None:
                    lines.append(
                        f"{_fit(node['name'], width):<{width}} {node['op_type']:<11} "
                        f"not measured: {node['reason']}"
                    )
                    continue
                lines.append(
                    f"{_fit(node['name'], width):<{width}} {node['op_type']:<11} "
                    f"{_num(node['cosine'], 6):>9} {_num(node['snr_db']):>8} {node['max_abs']:>10.3g}"
                    + "".join(f" {_num(node[f'snr_db_{k}']):>13}" for k in kinds)
                )
        lines.append("")
        if self.nonfinite_node:
            lines.append(f"NaN/Inf first appear at converted node {self.nonfinite_node}")
        reasons = []
        if self.failure:
            reasons.append(self.failure)
        for name, m in self.outputs.items():
            if not m["passed"] and not (self.failure and (m.get("error") or "").startswith("not compared")):
                reasons.append(f"{name}: {m['error']}" if m.get("error") else f"{name} outside tolerance")
        lines.append("FAILED (" + "; ".join(reasons) + ")" if reasons else "PASSED")
        return "\n".join(lines)


def _worst_first(node: dict[str, Any]) -> tuple[int, float, float]:
    if node["output"] is None:  # not measured: last
        return (2, 0.0, 0.0)
    snr, cosine = node["snr_db"], node["cosine"]
    if math.isnan(snr) or math.isnan(cosine):
        return (0, -math.inf, -math.inf)
    return (1, snr, cosine)


def _fit(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters, keeping its end, marked with an ellipsis."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _num(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:400] + ("…" if len(text) > 400 else "")


def with_outputs(model: onnx.ModelProto, names: Sequence[str], keep: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` that also (``keep``) or only outputs ``names``; without
    ``keep``, nodes that do not lead to them are dropped."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    if not keep:
        del copy.graph.output[:]
        present = set()
        needed = set(names)
        kept = []
        for node in reversed(copy.graph.node):
            if needed.intersection(node.output):
                kept.append(node)
                needed.update(node.input)
                needed.update(_subgraph_names(node))
        del copy.graph.node[:]
        copy.graph.node.extend(reversed(kept))
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return copy


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every value name a node's subgraphs read (outer-scope values among them)."""
    names: set[str] = set()
    for attribute in node.attribute:
        for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
            for inner in body.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def open_session(
    model: onnx.ModelProto,
    folder: Path | None,
    label: str,
    threads: int | None = None,
    optimize: bool = True,
) -> ort.InferenceSession:
    """A session (custom ops registered) of ``model``, loaded from bytes; external data is
    read from ``folder``. A model onnxruntime refuses is a ``ValidationInputError``."""
    options = session_options()
    options.log_severity_level = 4  # failures are reported by validate itself, once
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if folder is not None:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(folder))
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several pybind types
        raise ValidationInputError(f"{label}: onnxruntime cannot load it: {_one_line(error)}") from None


def converted_nodes(original: ir.Model, converted: ir.Model) -> list[graph.NodeEntry]:
    """The ``lmul`` nodes of ``converted`` (wherever they sit), each checked against the
    node at the same place in ``original``: the standard op it replaces. The same place is
    the node with the same first output in the same graph or function (a conversion keeps
    output names, and folding a ``Pad`` removes nodes before it), else the same position;
    each entry is returned with the original node's key."""
    entries = [e for e in graph.walk(converted) if e.node.domain == DOMAIN]
    originals = list(graph.walk(original))
    by_key = {e.key: e for e in originals}
    by_output: dict[tuple[Any, str], graph.NodeEntry] = {}
    for each in originals:
        if each.node.outputs and each.node.outputs[0].name:
            by_output.setdefault((_scope(each), each.node.outputs[0].name), each)
    matched = []
    for entry in entries:
        output = entry.node.outputs[0].name if entry.node.outputs else None
        source = by_output.get((_scope(entry), output)) if output else None
        source = source or by_key.get(entry.key)
        expected = LMUL_TO_STANDARD.get(entry.node.op_type)
        if source is None or graph.standard_op(source.node) != expected or source.node.domain == DOMAIN:
            raise ValidationInputError(
                f"the converted model does not match the original: its node {entry.name} "
                f"({entry.node.op_type}) has no {expected} at the same place in the original"
            )
        matched.append(dataclasses.replace(entry, key=source.key))
    return matched


def _scope(entry: graph.NodeEntry) -> Any:
    """The function whose body holds the node (``None``: the main graph or its subgraphs)."""
    return entry.function.identifier() if entry.function is not None else None


def _not_measured(entry: graph.NodeEntry) -> dict[str, Any]:
    """The per-node row of a converted node whose output is not a graph value."""
    where = (
        f"inside function {graph.function_id(entry.function)}"
        if entry.function is not None
        else f"inside the body of {entry.parents[-1].op_type} {entry.name.rsplit('/', 2)[0]}"
    )
    return {
        "name": entry.name,
        "op_type": entry.node.op_type,
        "key": entry.key,
        "output": None,
        "reason": f"{where}: its output is not a graph value",
    }


def _tolerance(default: float, per_output: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    unknown = sorted(set(per_output) - set(names))
    if unknown:
        raise ValidationInputError(
            f"tolerance given for unknown output(s) {unknown}; outputs are {list(names)}"
        )
    return {name: per_output.get(name, default) for name in names}


def _first_nonfinite_node(
    original: onnx.ModelProto,
    converted: onnx.ModelProto,
    folders: tuple[Path | None, Path | None],
    feeds: Mapping[str, np.ndarray],
    lmul_outputs: Sequence[tuple[str, str]],
    threads: int | None,
) -> str | None:
    """The first converted node (graph order) whose output holds NaN/Inf on ``feeds``
    where the original's does not. A converted model that fails further on is cut
    short: the longest prefix of converted nodes that runs is examined."""

    def outputs(k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        names = [output for _, output in lmul_outputs[:k]]
        try:
            want = open_session(with_outputs(original, names, keep=False), folders[0], "original", threads)
            got = open_session(with_outputs(converted, names, keep=False), folders[1], "converted", threads)
            return (
                dict(zip(names, want.run(names, dict(feeds)), strict=True)),
                dict(zip(names, got.run(names, dict(feeds)), strict=True)),
            )
        except Exception:
            return None

    low, high = 0, len(lmul_outputs)
    result = outputs(high)
    if result is None:  # bisect for the longest prefix that runs
        while high - low > 1:
            middle = (low + high) // 2
            if outputs(middle) is None:
                high = middle
            else:
                low = middle
        result = outputs(low) if low else None
    if result is None:
        return None
    want, got = result
    for name, output in lmul_outputs:
        if output in got:
            o, c = np.asarray(want[output]), np.asarray(got[output])
            if o.shape == c.shape and c.dtype.kind == "f" and np.any(np.isfinite(o) & ~np.isfinite(c)):
                return name
    return None


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
    logits: Sequence[str] | None = None,
    save_inputs: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run both models on the same inputs and measure the drift of the converted one.

    Args:
        original, converted: paths or ``ModelProto``s.
        inputs: an ``.npz`` of inputs (keys ``NAME`` or ``I/NAME``); default: generated.
        samples, seed: how many generated samples, and the seed of the first.
        atol, rtol: numpy-allclose tolerances; ``*_per_output`` override them by name.
        min_cosine: if given, an output also fails when its cosine similarity to the
            original is below this.
        dims: values for symbolic dimensions; input_ranges: ``{name: (lo, hi)}``. Names
            the model does not have are refused.
        per_node: also measure the drift at the output of every converted node (and of
            the same node in each baseline).
        compare: baselines to report next to L-Mul (``fp8-e4m3``, ``fp8-e5m2``, ``bf16``).
        logits: the outputs that are class scores (``top1_agreement`` is reported for
            them); ``None``: the rule of :func:`lmul_onnx.metrics.looks_like_logits`.
        save_inputs: write the inputs used to this ``.npz`` (atomically).
        threads: intra-op threads of both sessions (default: onnxruntime's).
        progress: called as ``progress(message)`` for each phase and
            ``progress("sample", done, total)`` for each sample.

    Raises:
        lmul_onnx.ModelLoadError: a model file is missing or unreadable.
        ValidationInputError: a model onnxruntime cannot load, inputs or options that do
            not fit the model, an original that fails on the inputs.
    """
    say: Progress = progress or (lambda *args: None)
    original_ir, original_path = graph.load(original)
    converted_ir, converted_path = graph.load(converted)
    folders = (
        original_path.resolve().parent if original_path else None,
        converted_path.resolve().parent if converted_path else None,
    )
    labels = (str(original_path or "the original model"), str(converted_path or "the converted model"))
    output_names = [o.name for o in original_ir.graph.outputs]
    if output_names != [o.name for o in converted_ir.graph.outputs]:
        raise ValidationInputError(
            f"the two models have different graph outputs: {output_names} vs "
            f"{[o.name for o in converted_ir.graph.outputs]}"
        )
    for model, label in ((original_ir, labels[0]), (converted_ir, labels[1])):
        try:  # the lmul domain's rules (SPEC section 3), which onnx.checker cannot judge
            check_model(model)
        except DomainError as error:
            raise ValidationInputError(f"{label}: {error}") from None
    entries = converted_nodes(original_ir, converted_ir)
    measurable = [e for e in entries if e.in_main_graph and e.node.outputs and e.node.outputs[0].name]
    lmul_outputs = [(e.name, e.node.outputs[0].name) for e in measurable]
    node_outputs = [output for _, output in lmul_outputs] if per_node else []
    values = {v.name for node in original_ir.graph for v in node.outputs}
    for name, output in lmul_outputs if per_node else []:
        if output not in values:
            raise ValidationInputError(
                f"--per-node: the original model has no value {output!r} (output of converted node "
                f"{name!r}): is CONVERTED a conversion of ORIGINAL?"
            )
    original_model, converted_model = ir.to_proto(original_ir), ir.to_proto(converted_ir)
    if logits is not None:
        unknown = sorted(set(logits) - set(output_names))
        if unknown:
            raise ValidationInputError(
                f"--logits {', '.join(unknown)}: no such output; outputs are {output_names}"
            )
    atols = _tolerance(atol, atol_per_output or {}, output_names)
    rtols = _tolerance(rtol, rtol_per_output or {}, output_names)

    say("creating sessions")
    reference = open_session(with_outputs(original_model, node_outputs), folders[0], labels[0], threads)
    candidate = open_session(with_outputs(converted_model, node_outputs), folders[1], labels[1], threads)
    original_types = graph.infer(original_ir) if compare else None
    baseline_sessions = {
        # Unoptimised: onnxruntime would fuse the Cast pair away as if it were lossless.
        kind: open_session(
            with_outputs(
                ir.to_proto(
                    operand_rounded_model(original_ir, [e.key for e in entries], kind, original_types)
                ),
                node_outputs,
            ),
            folders[0],
            f"{labels[0]} with {kind} operands",
            threads,
            optimize=False,
        )
        for kind in compare
    }
    inputs_of = [[(i.name, i.type) for i in session.get_inputs()] for session in (reference, candidate)]
    if inputs_of[0] != inputs_of[1]:
        raise ValidationInputError(
            f"the two models have different inputs: {inputs_of[0]} vs {inputs_of[1]}"[:400]
        )
    specs = model_inputs.signature(reference)
    if inputs is not None:
        total, feeds_iter = model_inputs.npz_samples(inputs, specs)
        described: dict[str, Any] = {"file": str(inputs)}
    else:
        options = model_inputs.InputOptions(dims=dict(dims or {}), ranges=dict(input_ranges or {}), seed=seed)
        model_inputs.check_options(specs, options)
        total, feeds_iter = samples, model_inputs.generated(specs, options, samples)
        described = {"generated": model_inputs.describe(specs, options)}

    accumulators = {n: DriftAccumulator(atols[n], rtols[n], min_cosine=min_cosine) for n in output_names}
    node_accumulators = {
        kind: {output: DriftAccumulator(0.0, 0.0) for output in node_outputs} for kind in ("lmul", *compare)
    }
    baseline_accumulators = {
        kind: {n: DriftAccumulator(atols[n], rtols[n], min_cosine=min_cosine) for n in output_names}
        for kind in compare
    }
    errors: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    failure: str | None = None
    suspect: dict[str, np.ndarray] | None = None
    fetch = output_names + [o for o in node_outputs if o not in output_names]
    count = 0

    def run_all(writer: model_inputs.NpzWriter | None) -> None:
        nonlocal failure, suspect, count
        for index, feeds in enumerate(feeds_iter):
            say("sample", index + 1, total)
            if writer is not None:
                writer.add(index, feeds)
            try:
                want = dict(zip(fetch, reference.run(fetch, feeds), strict=True))
            except Exception as error:
                raise ValidationInputError(
                    f"{labels[0]} fails on sample {index}: {_one_line(error)}"
                ) from None
            count += 1
            try:
                got = dict(zip(fetch, candidate.run(fetch, feeds), strict=True))
            except Exception as error:
                failure = f"the converted model fails at run time on sample {index}: {_one_line(error)}"
                suspect = suspect or feeds
                return
            for name in output_names:
                dtypes.setdefault(name, str(np.asarray(want[name]).dtype))
                if name in errors:
                    continue
                before = accumulators[name].new_nonfinite
                is_logits = name in logits if logits is not None else looks_like_logits(name, want[name])
                try:
                    accumulators[name].add(want[name], got[name], logits=is_logits)
                except ValueError as error:  # shapes differ
                    errors[name] = f"{error} on sample {index}"
                    continue
                if accumulators[name].new_nonfinite > before and suspect is None:
                    suspect = feeds
            for output in node_outputs:
                _add_quietly(node_accumulators["lmul"][output], want[output], got[output])
            for kind, session in baseline_sessions.items():
                rounded = dict(zip(fetch, session.run(fetch, feeds), strict=True))
                for name in output_names:
                    is_logits = name in logits if logits is not None else looks_like_logits(name, want[name])
                    if name not in errors:
                        _add_quietly(baseline_accumulators[kind][name], want[name], rounded[name], is_logits)
                for output in node_outputs:
                    _add_quietly(node_accumulators[kind][output], want[output], rounded[output])

    if save_inputs is not None:
        target = check_output(save_inputs, overwrite=True, option="--save-inputs")
        with staged_files([target]) as staged:
            writer = model_inputs.NpzWriter(staged[target], total)
            try:
                run_all(writer)
            finally:
                writer.close()
    else:
        run_all(None)

    nonfinite_node = None
    if suspect is not None and lmul_outputs:
        say("looking for the first node with NaN/Inf")
        nonfinite_node = _first_nonfinite_node(
            original_model, converted_model, folders, suspect, lmul_outputs, threads
        )
    outputs = {}
    for name, accumulator in accumulators.items():
        entry = {"dtype": dtypes.get(name), **accumulator.result()}
        if name in errors:
            entry.update(passed=False, error=errors[name])
        elif failure is not None:
            entry.update(passed=False, error="not compared on every sample: the converted model failed")
        outputs[name] = entry
    nodes = []
    for entry in entries if per_node else []:
        if entry not in measurable:
            nodes.append(_not_measured(entry))
            continue
        output = entry.node.outputs[0].name
        result = node_accumulators["lmul"][output].result()
        row = {"name": entry.name, "op_type": entry.node.op_type, "key": entry.key, "output": output}
        row.update({k: result[k] for k in NODE_METRICS})
        for kind in compare:
            baseline = node_accumulators[kind][output].result()
            row.update({f"{k}_{kind}": baseline[k] for k in ("snr_db", "cosine")})
        nodes.append(row)
    return ValidationReport(
        outputs=outputs,
        atol=atols,
        rtol=rtols,
        samples=count,
        seed=seed,
        min_cosine=min_cosine,
        baselines={k: {n: a.result() for n, a in accs.items()} for k, accs in baseline_accumulators.items()},
        nodes=nodes,
        inputs=described,
        failure=failure,
        nonfinite_node=nonfinite_node,
    )


def _add_quietly(
    accumulator: DriftAccumulator, want: np.ndarray, got: np.ndarray, logits: bool = False
) -> None:
    """Add to a diagnostic accumulator; a shape mismatch there leaves it as it is."""
    with contextlib.suppress(ValueError):
        accumulator.add(np.asarray(want), np.asarray(got), logits=logits)
