"""``tune()``: the most energy-saving L-Mul conversion that keeps a model within a budget.

Three steps, every decision with a stated reason (see docs/tune.md):

1. **Rules.** The candidates are the nodes ``convert`` would convert with the same
   selection options; products by exact powers of two or 0/1 masks are already left
   exact by the rule of :mod:`lmul_onnx.passes.exact_products`.
2. **Measured sensitivity.** Each candidate is converted *alone*, once per mantissa
   width of the search space, and the whole model is run on the inputs: the node's drift
   (the noise-to-signal ratio of the outputs, and whether the budget still holds) and,
   from :func:`lmul_onnx.energy.energy`, its energy gain. A node that breaks the budget
   on its own stays exact; the others keep their most accurate width.
3. **Selection.** Nodes are ranked by gain per unit of drift and taken in blocks along
   the ranking, each block verified on the whole model: a block that breaks the budget
   is halved (bisection) until the node that breaks it is found and left exact, and the
   walk goes on after it (:meth:`_Search.select`). The choice is finally confirmed on
   the model as it will be written (:meth:`_Search.confirm`).

Every evaluation runs in memory: the model's large weights are lifted into session
inputs once, so an evaluation only rewrites and serialises the weight-free graph (through
the same rewrite pass as ``convert``) and opens an onnxruntime session from bytes. Inputs
and the original model's outputs are computed once. The result is a :class:`Plan` that
``convert --plan`` re-applies; the output model is written through that same path.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from lmul_onnx import graph
from lmul_onnx import inputs as model_inputs
from lmul_onnx.convert import (
    ModelInput,
    convert_file,
    convert_model,
    output_files,
    referenced_files,
    save_model,
    selection_options,
)
from lmul_onnx.energy import count, energy
from lmul_onnx.metrics import DriftAccumulator, looks_like_logits
from lmul_onnx.ops import DOMAIN, STANDARD_TO_LMUL, SUPPORTED_OPS
from lmul_onnx.output_paths import check_output
from lmul_onnx.passes.offsets import PAPER, TYPE_BITS, Choice, OffsetOptions, parse_offset
from lmul_onnx.passes.rewrite import NodeRecord
from lmul_onnx.passes.selection import Scope, SelectionOptions
from lmul_onnx.plan import Plan
from lmul_onnx.runtime import run, session_options

_LIFT_MIN_ELEMENTS = 1024
_FLOAT_INITIALIZERS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_TINY = 1e-30


class TuneError(ValueError):
    """A budget, metric or setting that cannot be used (exit status 2 in the CLI)."""


@dataclass(frozen=True)
class Budget:
    """What must hold after conversion, over all inputs and outputs.

    ``min_cosine``, ``atol``/``rtol`` (with per-output overrides) mean what they mean in
    ``validate``; ``min_snr_db`` is a floor on every output's SNR. ``metric``
    (``module:function`` or ``file.py:function``) is called as ``f(original, converted,
    inputs)`` with one ``{name: array}`` dict per sample in each list and returns a loss
    (a float) that must not exceed ``max_loss``. NaN where the original has none always
    fails. Element-wise tolerances are only checked when given.
    """

    min_cosine: float | None = None
    min_snr_db: float | None = None
    atol: float | None = None
    rtol: float | None = None
    atol_per_output: tuple[tuple[str, float], ...] = ()
    rtol_per_output: tuple[tuple[str, float], ...] = ()
    metric: str | None = None
    max_loss: float | None = None

    def __post_init__(self) -> None:
        if (self.metric is None) != (self.max_loss is None):
            raise TuneError("--metric and --max-loss go together: give both or neither")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise TuneError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")
        for name, value in (
            ("--atol", self.atol),
            ("--rtol", self.rtol),
            *(("--atol", v) for _, v in self.atol_per_output),
            *(("--rtol", v) for _, v in self.rtol_per_output),
        ):
            if value is not None and not value >= 0:
                raise TuneError(f"{name} must be a non-negative number, got {value}")
        for name, value in (("--min-snr", self.min_snr_db), ("--max-loss", self.max_loss)):
            if value is not None and math.isnan(value):
                raise TuneError(f"{name} must be a number, got nan")
        if not self.describe():
            raise TuneError(
                "no budget: give --min-cosine, --min-snr, --atol/--rtol, or --metric with --max-loss"
            )

    @property
    def elementwise(self) -> bool:
        return any(v is not None for v in (self.atol, self.rtol)) or bool(
            self.atol_per_output or self.rtol_per_output
        )

    def tolerances(self, output_names: Sequence[str]) -> dict[str, tuple[float, float]]:
        """``{output: (atol, rtol)}``; (inf, 0) for outputs without element-wise limits."""
        atols, rtols = dict(self.atol_per_output), dict(self.rtol_per_output)
        unknown = sorted((set(atols) | set(rtols)) - set(output_names))
        if unknown:
            raise TuneError(
                f"tolerance given for unknown output(s) {unknown}; outputs are {list(output_names)}"
            )
        if not self.elementwise:
            return {name: (math.inf, 0.0) for name in output_names}
        return {
            name: (atols.get(name, self.atol or 0.0), rtols.get(name, self.rtol or 0.0))
            for name in output_names
        }

    def describe(self) -> dict[str, Any]:
        """The budget's given parts, JSON-ready (recorded in the plan)."""
        return {
            k: (dict(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
            if v not in (None, ())
        }


def load_metric(spec: str) -> Callable[..., float]:
    """Import ``module:function`` (the current folder is searched too) or ``file.py:function``."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise TuneError(f"--metric {spec!r}: expected module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise TuneError(f"--metric {spec!r}: {path} is not a file")
            module_spec = importlib.util.spec_from_file_location(f"_lmul_metric_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(os.getcwd())
    except TuneError:
        raise
    except Exception as error:  # an import runs user code: any error is the user's
        raise TuneError(
            f"--metric {spec!r}: cannot import {module_name} ({type(error).__name__}: {error})"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TuneError(f"--metric {spec!r}: {module_name} has no function {function_name!r}")
    return function


@dataclass
class Measurement:
    """The drift of one converted variant of the model against the original."""

    passed: bool
    nsr: float  # worst output's noise-to-signal ratio: sum (c-o)^2 / sum o^2 (inf: NaN or failed run)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss: float | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """Worst values over the outputs (what tables and plans show)."""
        if self.error is not None:
            return {"passed": False, "error": self.error}
        cosines = [m["cosine"] for m in self.outputs.values()]
        snrs = [m["snr_db"] for m in self.outputs.values()]
        result: dict[str, Any] = {
            "passed": self.passed,
            "nsr": self.nsr,
            "cosine": min(cosines, key=lambda c: (not math.isnan(c), c)) if cosines else None,
            "snr_db": min(snrs, key=lambda s: (not math.isnan(s), s)) if snrs else None,
            "max_abs": max(m["max_abs"] for m in self.outputs.values()) if self.outputs else None,
        }
        if self.loss is not None:
            result["loss"] = self.loss
        return result


@dataclass
class Workload:
    """Everything an evaluation needs, picklable (sent once to each worker process)."""

    skeleton: bytes  # the model with its large weights lifted into graph inputs
    weights: dict[str, np.ndarray]
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    output_names: list[str]
    budget: Budget
    threads: int | None = None
    names: dict[str, str] = field(default_factory=dict)  # node key -> qualified name


def lift_weights(model: onnx.ModelProto) -> tuple[bytes, dict[str, np.ndarray]]:
    """The model serialised with its large float initializers turned into graph inputs,
    and those initializers' values (read once; sessions then get them as feeds)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    weights = {}
    graph_inputs = {i.name for i in copy.graph.input}
    kept = []
    for initializer in copy.graph.initializer:
        size = math.prod(initializer.dims)
        if initializer.data_type in _FLOAT_INITIALIZERS and size >= _LIFT_MIN_ELEMENTS:
            weights[initializer.name] = numpy_helper.to_array(initializer)
            if initializer.name not in graph_inputs:
                copy.graph.input.append(
                    onnx.helper.make_tensor_value_info(
                        initializer.name, initializer.data_type, list(initializer.dims)
                    )
                )
        else:
            kept.append(initializer)
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    return copy.SerializeToString(), weights


def observed_energy(
    proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], dims: Mapping[str, int]
) -> dict[str, Any]:
    """:func:`lmul_onnx.energy.energy` of ``proto``, with the shapes of the main graph's
    products (operands and result) as one run on ``feeds`` gives them.

    For models whose shapes follow the data itself (a speech synthesiser's length follows
    its predicted durations), which shape inference cannot know. Only the results of
    added ``Shape`` nodes are fetched, so the run costs no more memory than a plain one.
    """
    model, _ = graph.load(proto, validate=False)
    types = graph.infer(model, dims)
    values = list(
        dict.fromkeys(
            value
            for node in model.graph
            if node.op_type in STANDARD_TO_LMUL and node.domain in ("", "ai.onnx")
            for value in (*node.inputs[:2], *node.outputs[:1])
            if value is not None and value.const_value is None and value.name
        )
    )
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = [f"__lmul_observed_shape_{i}" for i in range(len(values))]
    for value, name in zip(values, names, strict=True):
        probe.graph.node.append(onnx.helper.make_node("Shape", [value.name], [name]))
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [None]))
    session = ort.InferenceSession(
        probe.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    del probe
    for value, shape in zip(values, run(session, feeds, names), strict=True):
        types.values[value] = graph.TensorType(types.of(value).dtype, tuple(int(d) for d in shape))
    return count(model, types, dims=dims)


Variant = tuple[int | None, Choice]  # (mantissa bits, offset choice) of one converted node
Assignment = Mapping[str, Variant]  # node key -> its variant; other nodes stay exact


class Evaluator:
    """Measures variants of one model (:data:`Assignment`: the nodes to convert)."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.metric = load_metric(workload.budget.metric) if workload.budget.metric else None
        self.tolerances = workload.budget.tolerances(workload.output_names)
        self.count = 0
        # One weight-free model, rewritten in place for each variant and restored after.
        self.model = ir.from_proto(onnx.ModelProto.FromString(workload.skeleton))
        self.types = graph.infer(self.model)
        self._products = [
            node
            for graph in (self.model.graph, *self.model.functions.values())
            for node in ir.traversal.RecursiveGraphIterator(graph)
            if node.op_type in STANDARD_TO_LMUL or node.domain == DOMAIN
        ]

    def model_bytes(self, assignment: Assignment) -> bytes:
        """The weight-free graph with exactly these nodes converted, by ``convert``'s own
        pass with the assignment as its plan; the model is restored afterwards."""
        nodes = [(node, node.domain, node.op_type, dict(node.attributes)) for node in self._products]
        imports = [(f, dict(f.opset_imports)) for f in (self.model, *self.model.functions.values())]
        try:
            names = self.workload.names
            selection = SelectionOptions(
                plan=tuple((k, names[k], v[0]) for k, v in sorted(assignment.items()))
            )
            offsets = OffsetOptions(by_key=tuple((k, v[1]) for k, v in sorted(assignment.items())))
            convert_model(self.model, selection, offsets=offsets, types=self.types)
            return ir.to_proto(self.model).SerializeToString()
        finally:
            for node, domain, op_type, attributes in nodes:
                node.domain, node.op_type = domain, op_type
                node.attributes.clear()
                node.attributes.update(attributes)
            for owner, saved in imports:
                owner.opset_imports.clear()
                owner.opset_imports.update(saved)

    def measure(self, assignment: Assignment) -> Measurement:
        """Run the variant on every input; its drift and whether the budget holds."""
        self.count += 1
        work = self.workload
        options = session_options()
        if work.threads:
            options.intra_op_num_threads = work.threads
        if work.weights:  # lifted weights: the fusions that need constant weights cannot apply
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            session = ort.InferenceSession(
                self.model_bytes(assignment), options, providers=["CPUExecutionProvider"]
            )
            converted = [
                dict(
                    zip(
                        work.output_names,
                        run(session, {**feeds, **work.weights}, work.output_names),
                        strict=True,
                    )
                )
                for feeds in work.feeds
            ]
        except Exception as error:  # a variant that does not run (a kernel error) fails the budget
            return Measurement(False, math.inf, error=f"{type(error).__name__}: {error}".splitlines()[0])
        return self.judge(converted)

    def judge(self, converted: list[dict[str, np.ndarray]]) -> Measurement:
        """Compare converted outputs with the original ones against the budget."""
        work, budget = self.workload, self.workload.budget
        accumulators = {
            name: DriftAccumulator(*self.tolerances[name], min_cosine=budget.min_cosine)
            for name in work.output_names
        }
        for index, (want, got) in enumerate(zip(work.reference, converted, strict=True)):
            for name in work.output_names:
                try:
                    accumulators[name].add(want[name], got[name], logits=looks_like_logits(name, want[name]))
                except ValueError as error:  # output shapes differ (a changed length): it fails
                    return Measurement(False, math.inf, error=f"{name}: {error} on sample {index}")
        outputs = {name: a.result() for name, a in accumulators.items()}
        passed = all(m["passed"] for m in outputs.values())
        if budget.min_snr_db is not None:
            passed = passed and all(m["snr_db"] >= budget.min_snr_db for m in outputs.values())
        nsr = max((_nsr(a) for a in accumulators.values()), default=0.0)
        loss = None
        if self.metric is not None:
            inputs = [{k: v for k, v in feeds.items()} for feeds in work.feeds]
            try:
                loss = float(self.metric(work.reference, converted, inputs))
            except Exception as error:
                raise TuneError(
                    f"--metric {budget.metric}: raised {type(error).__name__}: {error}".splitlines()[0]
                ) from None
            passed = passed and loss <= budget.max_loss  # type: ignore[operator]  # NaN fails
        return Measurement(passed, nsr, outputs, loss)


def _nsr(accumulator: DriftAccumulator) -> float:
    if accumulator.nan_mismatches:
        return math.inf
    if accumulator.sum_sq_err == 0:
        return 0.0
    return accumulator.sum_sq_err / accumulator.sum_sq_ref if accumulator.sum_sq_ref > 0 else math.inf


_WORKER: Evaluator | None = None


def _start_worker(workload: Workload) -> None:
    global _WORKER
    _WORKER = Evaluator(workload)


def _measure_in_worker(assignment: dict[str, Variant]) -> Measurement:
    assert _WORKER is not None
    return _WORKER.measure(assignment)


@dataclass
class Candidate:
    """One node of the search space and what was measured for it."""

    record: NodeRecord
    energy_pj: dict[str, float | None] | None
    singles: dict[Variant, Measurement] = field(default_factory=dict)
    variant: Variant = (None, PAPER)  # the chosen (width, offset): the most accurate passing one
    convert: bool = False
    reason: str = ""

    @property
    def gain_pj(self) -> float:
        if not self.energy_pj or self.energy_pj.get("original") is None:
            return 0.0
        return float(self.energy_pj["original"]) - float(self.energy_pj["lmul"] or 0.0)

    @property
    def best(self) -> Measurement | None:
        return self.singles.get(self.variant) if self.singles else None


@dataclass
class TuneResult:
    """The outcome: the plan, the verified drift, the energy and how long it took."""

    plan: Plan
    measurement: Measurement
    baseline: Measurement
    energy: dict[str, Any]
    evaluations: int
    seconds: float
    trace: list[dict[str, Any]]
    output_path: str | None = None

    @property
    def passed(self) -> bool:
        return self.measurement.passed

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report."""
        return {
            "passed": self.passed,
            "output": self.output_path,
            "budget": self.plan.budget,
            "energy": self.energy,
            "drift": self.measurement.summary(),
            "outputs": self.measurement.outputs,
            "baseline_drift": self.baseline.summary(),
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "nodes": self.plan.nodes,
            "trace": self.trace,
        }

    def format_table(self) -> str:
        """The per-node table and the summary, for people."""
        lines = [
            f"{'node':<48} {'op':<7} {'m':>3} {'offset':>8} {'drift (nsr)':>11} {'gain pJ':>10}  decision"
        ]
        for node in self.plan.nodes:
            drift = node.get("drift") or {}
            nsr = f"{drift['nsr']:.2e}" if isinstance(drift.get("nsr"), float) else "-"
            gain = node.get("energy_pj") or {}
            gain_text = f"{gain['original'] - gain['lmul']:.3g}" if gain.get("original") is not None else "-"
            bits = node.get("mantissa_bits")
            offset = node.get("offset")
            offset_text = (offset or "paper") if node["convert"] else "-"
            decision = "L-Mul" if node["convert"] else f"exact: {node['reason']}"
            lines.append(
                f"{node['node'][-48:]:<48} {node['op_type']:<7} {bits if bits else '-':>3} "
                f"{offset_text!s:>8} {nsr:>11} {gain_text:>10}  {decision}"
            )
        e = self.energy
        drift = self.measurement.summary()
        lines.append("")
        lines.append(
            f"converted {e['converted_nodes']} of {e['candidate_nodes']} candidate nodes: "
            f"{e['saved_percent']:.1f} % of the model's multiplication energy saved "
            f"(every product as L-Mul: {e['all_lmul_percent']:.1f} %)"
        )
        parts = [f"cosine {drift['cosine']:.6f}", f"snr {drift['snr_db']:.2f} dB"]
        if "loss" in drift:
            parts.append(f"loss {drift['loss']:.6g}")
        lines.append(f"drift: {', '.join(parts)} ({self.evaluations} evaluations, {self.seconds:.1f} s)")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


ProgressCallback = Callable[[str, int, int], None]


def _variants_for(
    record: NodeRecord, widths: Sequence[int | None], offsets: Sequence[Choice]
) -> list[Variant]:
    """The (width, offset) pairs of the search space that fit the node's type (width
    ``None``: the type's own)."""
    type_bits = TYPE_BITS.get(record.decision.element_type or "float32", 23)
    fitting = sorted({w for w in widths if w is None or w <= type_bits}, key=lambda w: w or type_bits)
    return [(bits, offset) for bits in fitting or [None] for offset in offsets]


def _preference(variant: Variant, offsets: Sequence[Choice]) -> tuple[int, int]:
    """Among equally accurate variants: the narrower width, then the earlier offset."""
    return (variant[0] or 99, list(offsets).index(variant[1]))


def _bound_dims(specs: list[model_inputs.InputSignature], feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Symbolic input dimensions as the inputs bind them (for the energy counts)."""
    dims = {}
    for spec in specs:
        for dim, size in zip(spec.shape, feeds[spec.name].shape, strict=False):
            if isinstance(dim, str):
                dims[dim] = int(size)
    return dims


class _Search:
    """The measured part of the search: single-node sensitivity, then the selection."""

    def __init__(
        self, evaluator: Evaluator, jobs: int, workload: Workload, progress: ProgressCallback
    ) -> None:
        self.evaluator = evaluator
        self.jobs = jobs
        self.workload = workload
        self.progress = progress
        self.trace: list[dict[str, Any]] = []

    def sensitivity(
        self, candidates: list[Candidate], widths: Sequence[int | None], offsets: Sequence[Choice]
    ) -> None:
        tasks = [(c, v) for c in candidates for v in _variants_for(c.record, widths, offsets)]
        self.progress("sensitivity", 0, len(tasks))
        assignments = [{c.record.key: variant} for c, variant in tasks]
        if self.jobs > 1 and len(tasks) > 1:
            context = get_context("spawn")
            with ProcessPoolExecutor(
                self.jobs, mp_context=context, initializer=_start_worker, initargs=(self.workload,)
            ) as pool:
                results = []
                for done, measurement in enumerate(pool.map(_measure_in_worker, assignments), 1):
                    results.append(measurement)
                    self.progress("sensitivity", done, len(tasks))
            self.evaluator.count += len(tasks)
        else:
            results = []
            for done, assignment in enumerate(assignments, 1):
                results.append(self.evaluator.measure(assignment))
                self.progress("sensitivity", done, len(tasks))
        for (candidate, variant), measurement in zip(tasks, results, strict=True):
            candidate.singles[variant] = measurement
        for candidate in candidates:
            singles = candidate.singles
            passing = [v for v, m in singles.items() if m.passed] or list(singles)
            candidate.variant = min(passing, key=lambda v: (singles[v].nsr, _preference(v, offsets)))
            if not singles[candidate.variant].passed:
                candidate.reason = "breaks the budget alone (" + _describe(singles[candidate.variant]) + ")"

    def verify(self, chosen: list[Candidate], label: str, model_energy: float) -> Measurement:
        measurement = self.evaluator.measure({c.record.key: c.variant for c in chosen})
        saved = sum(c.gain_pj for c in chosen)
        self.trace.append(
            {
                "step": label,
                "nodes": len(chosen),
                "saved_percent": 100 * saved / model_energy if model_energy else 0.0,
                **measurement.summary(),
            }
        )
        return measurement

    def select(
        self,
        ranked: list[Candidate],
        model_energy: float,
        baseline: Measurement,
        chosen: Sequence[Candidate] = (),
        retry: bool = False,
    ) -> tuple[list[Candidate], Measurement]:
        """Walk the ranking in blocks, each verified on the whole model with the nodes taken
        so far (``chosen`` to begin with, ``baseline`` their measurement): a block that
        keeps the budget is taken whole and the next block is twice as long; one that
        breaks it is halved (bisection) until the single node that breaks it is found,
        which stays exact. The first block is the whole ranking, so a model that keeps its
        budget fully converted costs one run, and one breaking node about 2 log2(n).
        ``retry``: the second-chance walk over nodes left exact before (their reason is
        kept, and extended when they break the budget again)."""
        chosen = list(chosen)
        best, position, size, done = baseline, 0, len(ranked), 0
        verb = "retry" if retry else "add"
        while position < len(ranked):
            block = ranked[position : position + size]
            label = f"{verb} {len(block)} (ranks {position + 1}-{position + len(block)})"
            measurement = self.verify([*chosen, *block], label, model_energy)
            done += 1
            if measurement.passed:
                chosen += block
                best, position, size = measurement, position + len(block), 2 * len(block)
            elif len(block) == 1:
                why = _describe(measurement)
                block[0].reason = (
                    f"{block[0].reason}; with the chosen nodes too ({why})"
                    if retry
                    else f"the model breaks the budget with it added ({why})"
                )
                position, size = position + 1, 1
            else:
                size = len(block) // 2
            remaining = len(ranked) - position
            self.progress("selection", done, done + (math.ceil(math.log2(remaining + 1)) if remaining else 0))
        self.progress("selection", done, done)
        return chosen, best

    def confirm(
        self, written: Evaluator, chosen: list[Candidate], measured: Measurement
    ) -> tuple[list[Candidate], Measurement]:
        """Check the choice on the model as it will be written (weights inside, so
        onnxruntime folds and fuses the exact parts as it will for the user). Tiny upstream
        differences can flip a coarse operand rounding downstream, so a choice that only
        just held may not hold there: the longest passing prefix of ``chosen`` (in the
        order taken) is then found by bisection on the written form."""
        self.progress("confirmation", 0, 1)
        final = written.measure({c.record.key: c.variant for c in chosen})
        if final.passed or not chosen:
            self.progress("confirmation", 1, 1)
            return chosen, final if final.passed else measured
        low, high, best = 0, len(chosen), None
        while high - low > 1:
            middle = (low + high) // 2
            measurement = written.measure({c.record.key: c.variant for c in chosen[:middle]})
            if measurement.passed:
                low, best = middle, measurement
            else:
                high = middle
        for candidate in chosen[low:]:
            candidate.reason = "the written model breaks the budget with it (final check)"
        if best is None:
            best = written.measure({})
        self.progress("confirmation", 1, 1)
        return chosen[:low], best


def _rank_key(candidate: Candidate) -> tuple[float, float, float, str]:
    """Most energy per unit of drift first; then more energy, then less drift (nodes of
    unknown energy come last, the most accurate first)."""
    nsr = candidate.best.nsr if candidate.best is not None else math.inf
    return (-(candidate.gain_pj / max(nsr, _TINY)), -candidate.gain_pj, nsr, candidate.record.key)


def _describe(measurement: Measurement) -> str:
    if measurement.error:
        return f"does not run: {measurement.error[:80]}"
    summary = measurement.summary()
    parts = [f"cosine {summary['cosine']:.6f}"]
    if "loss" in summary:
        parts.append(f"loss {summary['loss']:.4g}")
    return ", ".join(parts)


def tune(
    model: ModelInput,
    output_path: str | os.PathLike[str] | None = None,
    *,
    budget: Budget,
    plan_path: str | os.PathLike[str] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    samples: int = 1,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    mantissa_bits: Sequence[int | None] = (None,),
    offsets: Sequence[str | int] = (PAPER,),
    op_types: Sequence[str] = SUPPORTED_OPS,
    scope: str | Scope = Scope.ALL,
    nodes_to_include: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
    every_product: bool = False,
    jobs: int = 1,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> TuneResult:
    """Find the conversion that saves the most multiplication energy within ``budget``.

    Args:
        model: a path or ``onnx.ModelProto`` (never modified).
        output_path: where to write the converted model (as ``convert --plan`` would).
        budget: what must hold (:class:`Budget`).
        plan_path: where to write the plan (JSON, see :mod:`lmul_onnx.plan`).
        inputs, samples, seed, dims, input_ranges: the data, as in ``validate``.
        mantissa_bits: the widths to try per node (``None``: the type's own width).
        offsets: the offsets to try per node, as ``convert --offset`` takes them
            (``"paper"``, ``"unbiased"``, an integer or a fraction in [0, 1)).
        op_types, scope, nodes_to_include, nodes_to_exclude, every_product: restrict
            the search space exactly as the same options of ``convert`` do.
        jobs: worker processes for the sensitivity runs (1: in this process). They are
            started with ``spawn``: a script that asks for more than one calls ``tune``
            under ``if __name__ == "__main__":``.
        threads: intra-op threads per session (default: onnxruntime's; with jobs > 1,
            the cores shared among the workers).
        progress: called as ``progress(phase, done, total)``.
        overwrite: replace an existing output model or plan file (otherwise refused
            before the search starts, as ``convert`` refuses it).

    Raises:
        TuneError: an unusable budget, metric or setting, or a budget that fails even
            with nothing converted.
        lmul_onnx.ModelLoadError, lmul_onnx.inputs.InputError: bad model or inputs.
    """
    start = time.monotonic()
    say = progress or (lambda phase, done, total: None)
    if jobs < 1:
        raise TuneError(f"--jobs must be at least 1, got {jobs}")
    if budget.metric is not None:
        load_metric(budget.metric)  # a bad metric is reported before any work
    for bits in mantissa_bits:
        if bits is not None and not 1 <= bits <= 23:
            raise TuneError(f"mantissa bits must be in 1..23, got {bits}")
    try:
        offset_choices = list(dict.fromkeys(parse_offset(o) for o in offsets))
    except ValueError as error:
        raise TuneError(f"--offsets: {error}") from None
    if not offset_choices or not mantissa_bits:
        raise TuneError("nothing to search: give at least one mantissa width and one offset")
    try:
        options = selection_options(
            op_types_to_quantize=op_types,
            scope=scope,
            nodes_to_include=nodes_to_include,
            nodes_to_exclude=nodes_to_exclude,
            every_product=every_product,
        )
    except ValueError as error:
        raise TuneError(str(error)) from None

    say("loading", 0, 1)
    ir_model, path = graph.load(model)
    source = os.fspath(path) if path is not None else None
    # The outputs are checked before the search, so a long run never ends in a refusal.
    if output_path is not None:
        output_files(
            output_path,
            input_path=source,
            reads_from=referenced_files(ir_model, path.parent) if path is not None else (),
            overwrite=overwrite,
        )
    if plan_path is not None:
        protected = [(Path(os.path.abspath(source)), "the input model")] if source is not None else []
        check_output(plan_path, protected=protected, overwrite=overwrite, option="--plan-out")
    records = convert_model(ir_model, options, dry_run=True)
    if source is not None:
        proto = onnx.load(source)
    else:
        proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(ir_model)
    del ir_model
    session_opts = session_options()
    if threads:
        session_opts.intra_op_num_threads = threads
    original = ort.InferenceSession(
        source if source is not None else proto.SerializeToString(),
        session_opts,
        providers=["CPUExecutionProvider"],
    )
    specs = model_inputs.signature(original)
    data_options = model_inputs.InputOptions(
        dims=dict(dims or {}), ranges=dict(input_ranges or {}), seed=seed
    )
    feeds = model_inputs.samples_for(specs, inputs, samples, data_options)
    output_names = [o.name for o in original.get_outputs()]
    try:
        reference = [dict(zip(output_names, run(original, f, output_names), strict=True)) for f in feeds]
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError) as error:
        raise model_inputs.InputError(f"the inputs do not fit the model: {error}") from None
    del original

    bound = {**_bound_dims(specs, feeds[0]), **dict(dims or {})}
    counts = energy(proto, dims=bound)
    if counts["total"]["unknown_nodes"]:  # shapes that follow the data: take them from a run
        counts = observed_energy(proto, feeds[0], bound)
    per_key = {n["key"]: n["energy_pj"] for n in counts["nodes"]}  # function bodies: per call site
    model_energy = float(counts["total"]["energy_pj"]["original"])
    candidates = [Candidate(r, per_key.get(r.key)) for r in records if r.decision.convert]

    skeleton, weights = lift_weights(proto)
    cores = os.cpu_count() or 1
    workload = Workload(
        skeleton,
        weights,
        feeds,
        reference,
        output_names,
        budget,
        threads or (max(1, cores // jobs) if jobs > 1 else None),
        {r.key: r.name for r in records},
    )
    evaluator = Evaluator(workload)
    baseline = evaluator.measure({})
    if not baseline.passed:
        raise TuneError(
            "the budget fails even with no node converted (" + _describe(baseline) + "): loosen it"
        )
    search = _Search(evaluator, min(jobs, max(1, len(candidates))), workload, say)
    search.sensitivity(candidates, mantissa_bits, offset_choices)
    viable = [c for c in candidates if not c.reason]
    ranked = sorted(viable, key=_rank_key)
    chosen, final = search.select(ranked, model_energy, baseline)
    # Every node left exact with a finite drift of its own (it broke the budget alone, or
    # the walk rejected it beside the nodes taken by then) gets a second chance beside the
    # final choice: errors interact, and a coarse budget (a top-1 class of a photo whose
    # two best classes are close) can flip on one node's noise and not on the sum of
    # many. Each try is verified on the whole model like any other.
    second = sorted(
        (c for c in candidates if c.reason and c.best is not None and math.isfinite(c.best.nsr)),
        key=_rank_key,
    )
    if second:
        chosen, final = search.select(second, model_energy, final, chosen, retry=True)
    as_written = Evaluator(dataclasses.replace(workload, skeleton=proto.SerializeToString(), weights={}))
    chosen, final = search.confirm(as_written, chosen, final)
    evaluator.count += as_written.count
    chosen_keys = {c.record.key for c in chosen}
    for rank, candidate in enumerate(ranked, 1):
        if candidate.record.key in chosen_keys:
            candidate.convert = True
            candidate.reason = f"within budget (rank {rank} of {len(ranked)} by gain per drift)"
    for candidate in second:
        if candidate.record.key in chosen_keys:
            candidate.convert = True
            candidate.reason = f"within budget at the second chance (first: {candidate.reason})"

    by_key = {c.record.key: c for c in candidates}
    nodes = []
    for record in records:
        candidate = by_key.get(record.key)
        converted = bool(candidate and candidate.convert)
        bits, offset = candidate.variant if candidate and converted else (None, PAPER)
        entry: dict[str, Any] = {
            "key": record.key,
            "node": record.name,
            "op_type": record.op_type,
            "convert": converted,
            "mantissa_bits": bits,
            "offset": None if offset == PAPER else offset,
            "reason": candidate.reason if candidate else record.decision.reason,
            "drift": candidate.best.summary() if candidate and candidate.best else None,
            "energy_pj": candidate.energy_pj if candidate else per_key.get(record.key),
        }
        if entry["energy_pj"] is not None:
            entry["energy_pj"] = {k: entry["energy_pj"][k] for k in ("original", "lmul")}
        nodes.append(entry)
    saved = sum(c.gain_pj for c in chosen)
    exact = counts["total"]["exact_products"]
    energy_summary = {
        "model_pj": model_energy,
        "saved_pj": saved,
        "saved_percent": 100 * saved / model_energy if model_energy else 0.0,
        "all_lmul_percent": counts["total"]["lmul_saving_percent"],
        "exact_product_nodes": exact["nodes"],
        "exact_product_pj": exact["energy_pj"]["original"],
        "candidate_nodes": len(candidates),
        "converted_nodes": len(chosen),
        "unknown_nodes": counts["total"]["unknown_nodes"],
        "dims": bound,
    }
    plan = Plan(
        nodes,
        model=source,
        budget=budget.describe(),
        summary={
            "energy": energy_summary,
            "drift": final.summary(),
            "mantissa_bits": list(mantissa_bits),
            "offsets": offset_choices,
            "samples": len(feeds),
            "seed": seed,
            "inputs": os.fspath(inputs) if inputs is not None else None,
        },
    )
    written = None
    if output_path is not None:
        if source is not None:
            convert_file(
                source,
                output_path,
                plan.selection_options(),
                offsets=plan.offset_options(),
                overwrite=overwrite,
            )
        else:
            result_model = ir.from_proto(proto)
            convert_model(result_model, plan.selection_options(), offsets=plan.offset_options())
            save_model(result_model, output_path, overwrite=overwrite)
        written = os.fspath(output_path)
    if plan_path is not None:
        plan.save(plan_path)
    return TuneResult(
        plan,
        final,
        baseline,
        energy_summary,
        evaluator.count,
        time.monotonic() - start,
        search.trace,
        written,
    )
