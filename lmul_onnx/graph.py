"""The model layer every verb uses: load, walk, types and shapes, one dtype table.

* :func:`load` reads a path, ``onnx.ModelProto`` or ``onnx_ir.Model`` as an ``ir.Model``
  (external weights memory-mapped) and refuses, in one line, what onnxruntime would
  refuse: empty or graph-less files, opsets below 7, anything ``onnx.checker`` (full
  check) rejects (cycles, dangling inputs, unknown ops, wrong attributes), negative
  dimensions and initializers whose data does not match their dims.
* :func:`walk` yields every node of the main graph, of every nested subgraph at any depth
  and of every model-local function, each with a stable :attr:`NodeEntry.key` (positions,
  never names) and a qualified display name (``If_0/then_branch/Gemm_1``,
  ``local.Scale/Mul``). With ``expand_calls=True`` function bodies are walked once per call
  site instead (what operation counts need).
* :func:`infer` types and shapes every value once: ONNX shape inference (with data
  propagation) then onnxruntime's symbolic shape inference, on a copy without the large
  weights, ``lmul`` ops seen as the standard ops they replace. Function bodies are typed
  from their call sites, one inference per distinct call signature.
* The dtype table is onnx-ir's ``DataType`` (with its numpy / ``ml_dtypes`` mapping);
  :func:`dtype_from_ort` and :func:`mantissa_bits` derive from it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from lmul_onnx.ops import DOMAIN, LMUL_TO_STANDARD

logger = logging.getLogger(__name__)

ModelInput = str | os.PathLike[str] | onnx.ModelProto | ir.Model
MIN_OPSET = 7  # the oldest default-domain opset onnxruntime runs
SMALL_CONSTANT = 1024  # initializers up to this many elements stay in the inference copy
_MAX_CALL_DEPTH = 16
_STANDARD_DOMAINS = ("", "ai.onnx")


class ModelLoadError(ValueError):
    """The input is not a readable, valid ONNX model."""


# --------------------------------------------------------------------------- dtypes


def dtype_from_ort(type_string: str) -> np.dtype | None:
    """The numpy dtype of an onnxruntime type string (``"tensor(float)"``), else None."""
    if not (type_string.startswith("tensor(") and type_string.endswith(")")):
        return None
    name = type_string[len("tensor(") : -1].upper()
    try:
        return np.dtype(ir.DataType[name].numpy())
    except (KeyError, TypeError, ValueError):
        return None


def mantissa_bits(dtype: ir.DataType) -> int | None:
    """The stored mantissa width of a floating-point type (23 for float32), else None."""
    if not dtype.is_floating_point():
        return None
    try:
        return int(dtype.mantissa_bitwidth)
    except (AttributeError, TypeError, ValueError):
        return None


def dtype_name(dtype: ir.DataType | None) -> str:
    """A lower-case name for people and JSON (``float32``, ``bfloat16``, ``int64``)."""
    if dtype is None:
        return "unknown"
    try:
        return np.dtype(dtype.numpy()).name
    except TypeError:
        return dtype.name.lower()


# --------------------------------------------------------------------------- load


def _read_path(path: Path) -> ir.Model:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    try:
        with _quiet("onnx_ir.serde"):  # its warnings about invalid graphs: check() says it in one line
            return ir.load(path)
    except Exception as error:  # protobuf and onnx-ir raise many types for a bad file
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None


def _one_line(text: str, limit: int = 300) -> str:
    """A multi-line message (onnx.checker's) as one line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_dims(graph: ir.Graph | ir.Function, where: str) -> None:
    values = [*graph.inputs, *graph.outputs]
    for node in graph:
        values.extend(node.outputs)
    for value in values:
        shape = value.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
            raise ModelLoadError(f"{where}: value {value.name!r} has a negative dimension {list(shape)}")


def _check_initializer(value: ir.Value, where: str) -> None:
    tensor = value.const_value
    if tensor is None:
        return
    count = math.prod(tensor.shape.numpy())
    if any(d < 0 for d in tensor.shape.numpy()):
        raise ModelLoadError(f"{where}: initializer {value.name!r} has negative dims {list(tensor.shape)}")
    expected = math.ceil(count * tensor.dtype.bitwidth / 8) if not tensor.dtype.is_string() else None
    if isinstance(tensor, ir.ExternalTensor):
        file = Path(tensor.base_dir) / tensor.location
        length = tensor.length if tensor.length is not None else None
        try:
            size = file.stat().st_size
        except OSError:
            raise ModelLoadError(f"{where}: initializer {value.name!r}: cannot read {file}") from None
        if (tensor.offset or 0) < 0 or (length is not None and length < 0):
            raise ModelLoadError(
                f"{where}: initializer {value.name!r}: negative external-data offset or length"
            )
        available = size - (tensor.offset or 0)
        if expected is not None and ((length is not None and length != expected) or available < expected):
            raise ModelLoadError(
                f"{where}: initializer {value.name!r}: its external data does not match its dims "
                f"{list(tensor.shape)}"
            )
        return
    if isinstance(tensor, ir.TensorProtoTensor):
        proto = tensor.raw
        if proto.HasField("raw_data"):
            if expected is not None and len(proto.raw_data) != expected:
                raise ModelLoadError(
                    f"{where}: initializer {value.name!r} holds {len(proto.raw_data)} bytes, its dims "
                    f"{list(tensor.shape)} need {expected}"
                )
            return
        try:
            tensor.numpy()
        except Exception:
            raise ModelLoadError(
                f"{where}: initializer {value.name!r}: its data does not match its dims {list(tensor.shape)}"
            ) from None


def _shapeless(infos: Iterable[onnx.ValueInfoProto]) -> list[onnx.ValueInfoProto]:
    return [i for i in infos if i.type.HasField("tensor_type") and not i.type.tensor_type.HasField("shape")]


def _checkable(proto: onnx.ModelProto, has_path: bool) -> onnx.ModelProto | None:
    """``proto`` as ``onnx.checker`` can judge it, or None. The checker demands a shape on
    every graph input and output, which onnxruntime does not: shape-less outputs get their
    inferred shape, else are left out of the copy; when an input has no shape the checker
    cannot be used. ``lmul`` nodes are judged as the standard ops they replace. Without
    the model's path, external data cannot be found: such weights become typed inputs."""
    has_lmul = any(node.domain == DOMAIN for node in _proto_nodes(proto))
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    shapeless = _shapeless(proto.graph.input) or _shapeless(proto.graph.output)
    if not has_lmul and not shapeless and (has_path or not external):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    _standard_view(copy)  # the kernels check lmul attributes themselves
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False).graph.output
    except Exception:
        inferred = copy.graph.output
    shapes = {o.name: o.type.tensor_type.shape for o in inferred if o.type.tensor_type.HasField("shape")}
    for info in _shapeless(copy.graph.output):
        if info.name in shapes:
            info.type.tensor_type.shape.CopyFrom(shapes[info.name])
    # The checker looks for external data beside the working folder: the copy holds such
    # weights as typed inputs (their files are checked by _check_initializer).
    external = [t for t in copy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    declared = {i.name for i in copy.graph.input}
    for tensor in external:
        copy.graph.initializer.remove(tensor)
        if tensor.name not in declared:
            copy.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    for info in _shapeless(copy.graph.output):  # no shape to give: judge the graph without it
        copy.graph.output.remove(info)
    return None if _shapeless(copy.graph.input) else copy


def check(model: ir.Model, path: Path | None = None, proto: onnx.ModelProto | None = None) -> None:
    """Raise ``ModelLoadError`` (one line) for a model onnxruntime would refuse."""
    where = str(path) if path is not None else "model"
    no_graph = len(model.graph) == 0 and not model.graph.outputs
    if not model.ir_version or no_graph:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph)")
    opset = next((v for d, v in model.opset_imports.items() if d in _STANDARD_DOMAINS), None)
    if opset is not None and opset < MIN_OPSET:
        raise ModelLoadError(
            f"{where}: opset {opset} is older than {MIN_OPSET}, the oldest onnxruntime runs; "
            "upgrade it first (onnx.version_converter)"
        )
    # Dims and initializer sizes first: their messages name the value, the checker's may not.
    for graph in (model.graph, *model.functions.values()):
        _check_dims(graph, where)
    for graph in model.graphs():
        for value in graph.initializers.values():
            _check_initializer(value, where)
    if proto is None:
        proto = onnx.load(path, load_external_data=False) if path is not None else ir.to_proto(model)
    checkable = _checkable(proto, path is not None)
    try:
        if checkable is proto and path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        elif checkable is not None:
            onnx.checker.check_model(checkable, full_check=True)
    except Exception as error:  # ValidationError, InferenceError, protobuf errors
        raise ModelLoadError(f"{where}: invalid model: {_one_line(str(error))}") from None


def load(model: ModelInput, *, validate: bool = True) -> tuple[ir.Model, Path | None]:
    """A path, ``ModelProto`` or ``ir.Model`` as an ``ir.Model`` (external weights
    memory-mapped; a ``ModelProto`` is copied, never modified), with its file path if any.

    With ``validate`` (default) the model is also checked (:func:`check`).

    Raises:
        ModelLoadError: a missing, unreadable or invalid model, in one line.
    """
    if isinstance(model, ir.Model):
        loaded, path, proto = model, None, None
    elif isinstance(model, onnx.ModelProto):
        proto = model
        try:
            with _quiet("onnx_ir.serde"):
                loaded, path = ir.from_proto(model), None
        except Exception as error:
            raise ModelLoadError(
                f"model: not a readable ONNX model ({type(error).__name__}: {error})"
            ) from None
    else:
        path, proto = Path(os.fspath(model)), None
        loaded = _read_path(path)
    if validate:
        check(loaded, path, proto)
    return loaded, path


# --------------------------------------------------------------------------- walk


@dataclass(frozen=True)
class NodeEntry:
    """One node of a model, where it sits and how to name it."""

    node: ir.Node
    key: str  # stable identity: positions, e.g. "3", "3/then_branch/1", "local::Scale/0"
    name: str  # qualified display name, e.g. "If_0/then_branch/Gemm_1", "local.Scale/Mul"
    function: ir.Function | None = None  # the local function whose body holds it, if any
    parents: tuple[ir.Node, ...] = ()  # enclosing If/Loop/Scan nodes (and call sites), outermost first
    calls: tuple[ir.Node, ...] = ()  # call-site nodes of the expanded function bodies, outermost first

    @property
    def location(self) -> str:
        """``graph``, ``graph/<If>/<attribute>`` or ``function:<domain.name>``."""
        parts = self.name.split("/")[:-1]
        if self.function is not None and not self.calls:
            return f"function:{'/'.join(parts)}"
        return "/".join(["graph", *parts])

    @property
    def in_main_graph(self) -> bool:
        """True for a node of the main graph itself (its outputs can be fetched)."""
        return not self.parents and self.function is None


def user_functions(model: ir.Model) -> dict[ir.OperatorIdentifier, ir.Function]:
    """The model's own functions: those of the ``lmul`` domain are the portable bodies of
    the ``lmul`` ops (:mod:`lmul_onnx.portable`), definitions of ops, never walked."""
    return {key: f for key, f in model.functions.items() if f.domain != DOMAIN}


def function_id(function: ir.Function) -> str:
    return f"{function.domain}.{function.name}" + (f":{function.overload}" if function.overload else "")


def _local(node: ir.Node, functions: Mapping[ir.OperatorIdentifier, ir.Function]) -> ir.Function | None:
    return functions.get((node.domain, node.op_type, node.overload))


def _walk_graph(
    graph: ir.Graph | ir.Function,
    key: str,
    name: str,
    function: ir.Function | None,
    parents: tuple[ir.Node, ...],
    calls: tuple[ir.Node, ...],
    functions: Mapping[ir.OperatorIdentifier, ir.Function] | None,
) -> Iterator[NodeEntry]:
    for index, node in enumerate(graph):
        node_key = f"{key}/{index}" if key else str(index)
        own = node.name or f"{standard_op(node) or node.op_type}#{index}"
        node_name = f"{name}/{own}" if name else own
        yield NodeEntry(node, node_key, node_name, function, parents, calls)
        for attribute in node.attributes.values():
            if isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPH:
                subgraphs = [(attribute.name, attribute.value)]
            elif isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPHS:
                subgraphs = [(f"{attribute.name}[{i}]", g) for i, g in enumerate(attribute.value)]
            else:
                continue
            for label, subgraph in subgraphs:
                yield from _walk_graph(
                    subgraph,
                    f"{node_key}/{label}",
                    f"{node_name}/{label}",
                    function,
                    (*parents, node),
                    calls,
                    functions,
                )
        callee = _local(node, functions) if functions is not None else None
        if callee is not None and len(calls) < _MAX_CALL_DEPTH and callee not in _callers(calls, functions):
            yield from _walk_graph(
                callee,
                f"{node_key}/{function_id(callee)}",
                f"{node_name}/{function_id(callee)}",
                callee,
                (*parents, node),
                (*calls, node),
                functions,
            )


def _callers(
    calls: tuple[ir.Node, ...], functions: Mapping[ir.OperatorIdentifier, ir.Function] | None
) -> list[ir.Function]:
    return [f for c in calls if functions is not None and (f := _local(c, functions)) is not None]


def walk(model: ir.Model, *, expand_calls: bool = False) -> Iterator[NodeEntry]:
    """Every node of ``model``: main graph and its subgraphs (pre-order), then every
    model-local function body. With ``expand_calls`` function bodies are not walked on
    their own but below each call site (a body called twice appears twice, with
    ``calls`` naming the call site; recursion stops at a function already being expanded).
    """
    functions = user_functions(model) if expand_calls else None
    yield from _walk_graph(model.graph, "", "", None, (), (), functions)
    if expand_calls:
        return
    for function in user_functions(model).values():
        key = f"{function.domain}::{function.name}" + (f"::{function.overload}" if function.overload else "")
        yield from _walk_graph(function, key, function_id(function), function, (), (), None)


def find(model: ir.Model, keys: set[str]) -> dict[str, NodeEntry]:
    """The entries (static walk) whose keys are in ``keys``."""
    keys = set(keys)
    return {entry.key: entry for entry in walk(model) if entry.key in keys}


def standard_op(node: ir.Node) -> str | None:
    """The standard op type of a node (an ``lmul`` op counts as the op it replaces)."""
    if node.domain == DOMAIN:
        return LMUL_TO_STANDARD.get(node.op_type)
    return node.op_type if node.domain in _STANDARD_DOMAINS else None


# --------------------------------------------------------------------------- types and shapes


@dataclass(frozen=True)
class TensorType:
    """A value's element type and shape (``None`` for an unknown dim or rank)."""

    dtype: ir.DataType | None = None
    shape: tuple[int | None, ...] | None = None

    @property
    def known_dims(self) -> int:
        return -1 if self.shape is None else sum(d is not None for d in self.shape)


def _tensor_type(info: onnx.ValueInfoProto) -> TensorType:
    if not info.type.HasField("tensor_type"):
        return TensorType()
    tensor = info.type.tensor_type
    dtype = ir.DataType(tensor.elem_type) if tensor.elem_type else None
    if not tensor.HasField("shape"):
        return TensorType(dtype)
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim
    )
    return TensorType(dtype, shape)


def _better(a: TensorType | None, b: TensorType) -> TensorType:
    if a is None:
        return b
    dtype = a.dtype or b.dtype
    shape = a.shape if a.known_dims >= b.known_dims else b.shape
    return TensorType(dtype, shape)


# Inferred types by scope: "" is the (main or body) graph; a subgraph is named by the first
# output of its node and the attribute label, which SSA makes unique.
_Scoped = dict[str, dict[str, TensorType]]


def _collect(graph: onnx.GraphProto, scope: str, into: _Scoped) -> None:
    table = into.setdefault(scope, {})
    for info in (*graph.input, *graph.output, *graph.value_info):
        table[info.name] = _better(table.get(info.name), _tensor_type(info))
    for initializer in graph.initializer:
        table.setdefault(
            initializer.name, TensorType(ir.DataType(initializer.data_type), tuple(initializer.dims))
        )
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _collect(
                    attribute.g, f"{node.output[0] if node.output else node.name}/{attribute.name}", into
                )
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for i, subgraph in enumerate(attribute.graphs):
                    owner = node.output[0] if node.output else node.name
                    _collect(subgraph, f"{owner}/{attribute.name}[{i}]", into)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _symbolic(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, partial results kept. Its ``infer_shapes``
    saves ``sym_shape_infer_temp.onnx`` into the working folder when inference is
    incomplete, so its steps are run here without that save."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    with _quiet("onnxruntime.tools.symbolic_shape_infer"):
        try:
            inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
            inference._preprocess(proto)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
            return inference.out_mp_
        except Exception as error:  # best effort: ONNX's inference stands alone
            logger.debug("symbolic shape inference failed: %s", error)
            return None


def _infer_proto(proto: onnx.ModelProto) -> _Scoped:
    """THE inference routine: ONNX's (data propagation on), then onnxruntime's symbolic
    inference; per value the result with more known dims wins."""
    scoped: _Scoped = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as error:  # best effort: keep the declared types
        logger.debug("ONNX shape inference failed: %s", error)
        inferred = proto
    _collect(inferred.graph, "", scoped)
    opset = next((o.version for o in proto.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    if opset >= MIN_OPSET:
        symbolic = _symbolic(inferred)
        if symbolic is not None:
            _collect(symbolic.graph, "", scoped)
    return scoped


def _as_standard(node: onnx.NodeProto, opset: int) -> None:
    """Turn an ``lmul`` node into the standard op it replaces (for inference only)."""
    if node.domain == DOMAIN and node.op_type in LMUL_TO_STANDARD:
        node.domain, node.op_type = "", LMUL_TO_STANDARD[node.op_type]
        try:
            known = set(onnx.defs.get_schema(node.op_type, opset, "").attributes)
        except Exception:
            known = set()
        kept = [a for a in node.attribute if a.name in known]
        del node.attribute[:]
        node.attribute.extend(kept)


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and its subgraphs at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from proto_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from proto_graphs(subgraph)


def _proto_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of a ModelProto: graphs, subgraphs, function bodies (and theirs)."""
    for graph in proto_graphs(proto.graph):
        yield from graph.node
    for function in proto.functions:
        for node in function.node:
            yield node
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
                for subgraph in subgraphs:
                    for inner in proto_graphs(subgraph):
                        yield from inner.node


def _standard_view(proto: onnx.ModelProto) -> None:
    """In place: every ``lmul`` node as the standard op it replaces."""
    opset = next((o.version for o in proto.opset_import if o.domain in _STANDARD_DOMAINS), 1)
    for node in _proto_nodes(proto):
        _as_standard(node, opset)


def _prepare(proto: onnx.ModelProto, dims: Mapping[str, int]) -> None:
    """In place: lmul ops as standard ops, declared intermediate shapes dropped (exporters
    often write placeholder symbols), symbolic input dims bound."""
    _standard_view(proto)
    for graph in proto_graphs(proto.graph):
        del graph.value_info[:]
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]


def _skeleton(model: ir.Model, dims: Mapping[str, int]) -> onnx.ModelProto:
    """``model`` serialised with every large initializer turned into a typed graph input
    (small ones keep their data: shape arithmetic needs them); ``model`` is left as it was."""
    graph = model.graph
    saved_inputs = list(graph.inputs)
    saved_initializers = dict(graph.initializers)
    saved_types = {v: (v.shape, v.dtype) for v in saved_initializers.values()}
    try:
        graph.initializers.clear()
        for value in saved_initializers.values():
            tensor = value.const_value
            if tensor is not None and tensor.size <= SMALL_CONSTANT:
                graph.register_initializer(value)
                continue
            if tensor is not None:
                value.shape = value.shape or tensor.shape
                value.dtype = value.dtype or tensor.dtype
            if value not in graph.inputs:
                graph.inputs.append(value)
        proto = ir.serde.serialize_model(model)
    finally:
        graph.inputs.clear()
        graph.inputs.extend(saved_inputs)
        graph.initializers.clear()
        for value, (shape, dtype) in saved_types.items():
            value.shape, value.dtype = shape, dtype
            graph.register_initializer(value)
    _prepare(proto, dims)
    return proto


@dataclass
class Types:
    """Types and shapes of every value (from :func:`infer`).

    ``values`` covers the main graph and its subgraphs; ``bodies[calls]`` the body of the
    function called through the call-site chain ``calls`` (outermost first).
    """

    values: dict[ir.Value, TensorType] = field(default_factory=dict)
    bodies: dict[tuple[ir.Node, ...], dict[ir.Value, TensorType]] = field(default_factory=dict)
    _contexts: dict[ir.OperatorIdentifier, list[tuple[ir.Node, ...]]] = field(
        default_factory=dict, repr=False
    )

    def of(self, value: ir.Value | None, calls: tuple[ir.Node, ...] = ()) -> TensorType:
        """The type of ``value`` in the context of the call-site chain ``calls``."""
        if value is None:
            return TensorType()
        found = None
        for depth in range(len(calls), -1, -1):  # a body may read an outer value
            table = self.bodies.get(calls[:depth]) if depth else self.values
            if table is not None and value in table:
                found = table[value]
                break
        declared = TensorType(
            value.dtype or (value.const_value.dtype if value.const_value is not None else None),
            None if value.shape is None else tuple(d if isinstance(d, int) else None for d in value.shape),
        )
        if found is None:
            return declared
        return TensorType(
            found.dtype or declared.dtype, found.shape if found.shape is not None else declared.shape
        )

    def dtypes(self, value: ir.Value | None, function: ir.Function | None) -> set[ir.DataType | None]:
        """The element types of ``value`` over every context: one for a graph value, one
        per call signature for a value of a function body."""
        if function is None:
            return {self.of(value).dtype}
        if not self._contexts and self.bodies:
            for calls in self.bodies:
                key = (calls[-1].domain, calls[-1].op_type, calls[-1].overload)
                self._contexts.setdefault(key, []).append(calls)
        contexts = self._contexts.get(function.identifier(), [])
        if not contexts:
            return {self.of(value).dtype}
        return {self.of(value, calls).dtype for calls in contexts}


def _local_of(call: ir.Node, function: ir.Function) -> bool:
    return (call.domain, call.op_type, call.overload) == function.identifier()


def _assign(
    graph: ir.Graph | ir.Function, scope: str, scoped: _Scoped, into: dict[ir.Value, TensorType]
) -> None:
    table = scoped.get(scope, {})
    values = list(graph.inputs)
    if isinstance(graph, ir.Graph):
        values.extend(graph.initializers.values())
    for node in graph:
        values.extend(node.outputs)
    for value in values:
        if value.name in table:
            into[value] = table[value.name]
    for node in graph:
        owner = node.outputs[0].name if node.outputs else node.name
        for attribute in node.attributes.values():
            if isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPH:
                _assign(attribute.value, f"{owner}/{attribute.name}", scoped, into)
            elif isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPHS:
                for i, subgraph in enumerate(attribute.value):
                    _assign(subgraph, f"{owner}/{attribute.name}[{i}]", scoped, into)


def _body_model(
    skeleton: onnx.ModelProto, function: onnx.FunctionProto, call: ir.Node, inputs: list[TensorType]
) -> onnx.ModelProto:
    """A model whose graph is ``function``'s body with the call site's input types and
    attributes (references to function attributes resolved)."""
    given = {name: ir.serde.serialize_attribute(attr) for name, attr in call.attributes.items()}
    defaults = {a.name: a for a in function.attribute_proto}
    nodes = []
    for node in function.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        attributes = []
        for attribute in copy.attribute:
            if attribute.ref_attr_name:
                source = given.get(attribute.ref_attr_name) or defaults.get(attribute.ref_attr_name)
                if source is None:
                    continue
                resolved = onnx.AttributeProto()
                resolved.CopyFrom(source)
                resolved.name = attribute.name
                attributes.append(resolved)
            else:
                attributes.append(attribute)
        del copy.attribute[:]
        copy.attribute.extend(attributes)
        nodes.append(copy)
    graph_inputs = []
    for name, tensor_type in zip(function.input, inputs, strict=False):
        if not name:
            continue
        elem = int(tensor_type.dtype) if tensor_type.dtype is not None else 0
        shape = None if tensor_type.shape is None else list(tensor_type.shape)
        graph_inputs.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    graph = onnx.helper.make_graph(
        nodes,
        function.name,
        graph_inputs,
        [onnx.helper.make_empty_tensor_value_info(o) for o in function.output],
    )
    imports = {o.domain: o.version for o in skeleton.opset_import}
    imports.update({o.domain: o.version for o in function.opset_import})
    return onnx.helper.make_model(
        graph,
        ir_version=skeleton.ir_version,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in imports.items()],
        functions=list(skeleton.functions),
    )


def infer(model: ir.Model, dims: Mapping[str, int] | None = None) -> Types:
    """Types and shapes of every value of ``model`` (subgraphs included) and of every
    function body at every call site; ``dims`` binds symbolic input dimensions.

    The model itself is not changed. Values whose type stays unknown get their declared
    type (often none) from :meth:`Types.of`.
    """
    dims = dims or {}
    skeleton = _skeleton(model, dims)
    types = Types()
    _assign(model.graph, "", _infer_proto(skeleton), types.values)
    protos = {(f.domain, f.name, getattr(f, "overload", "")): f for f in skeleton.functions}
    cache: dict[tuple, _Scoped] = {}
    functions = user_functions(model)

    def type_calls(graph_entries: list[NodeEntry], calls: tuple[ir.Node, ...]) -> None:
        for entry in graph_entries:
            function = functions.get((entry.node.domain, entry.node.op_type, entry.node.overload))
            if function is None or len(calls) >= _MAX_CALL_DEPTH:
                continue
            if any(_local_of(c, function) for c in calls):
                continue  # recursion
            inputs = [types.of(v, calls) for v in entry.node.inputs]
            attributes = tuple(sorted((n, repr(a.value)) for n, a in entry.node.attributes.items()))
            signature = (function.identifier(), tuple(inputs), attributes)
            if signature not in cache:
                proto = protos.get(function.identifier())
                cache[signature] = (
                    _infer_proto(_body_model(skeleton, proto, entry.node, inputs)) if proto else {}
                )
            chain = (*calls, entry.node)
            table: dict[ir.Value, TensorType] = {}
            _assign(function, "", cache[signature], table)
            types.bodies[chain] = table
            type_calls(list(_walk_graph(function, "", "", function, (), chain, None)), chain)

    type_calls(list(_walk_graph(model.graph, "", "", None, (), (), None)), ())
    return types


def constant_int(value: ir.Value | None) -> int | None:
    """The integer held by a constant scalar (an initializer or a Constant's output)."""
    if value is None:
        return None
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant":
        attribute = producer.attributes.get("value")
        tensor = attribute.value if attribute is not None else None
        if tensor is None and producer.attributes.get("value_int") is not None:
            return int(producer.attributes["value_int"].value)
    if tensor is None:
        return None
    try:
        array = np.asarray(tensor.numpy())
    except Exception:
        return None
    return int(array.reshape(-1)[0]) if array.size == 1 and array.dtype.kind in "iu" else None
