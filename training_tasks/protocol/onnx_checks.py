"""Checks an ONNX file must pass before onnxruntime sees it: size, external data, domains, contract.

onnxruntime resolves a tensor's external-data location against the working directory even for a
model loaded from bytes, and the onnx checker stats that path, so no tensor may point outside
the file; a custom operator domain could pull in a native library. Pure: no Celery, no database.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, SparseTensorProto, TensorProto

from training_tasks.protocol.decision import ALARM_NAME

MAX_MODEL_BYTES = 512 * 1024 * 1024
INPUT_NAME = "input"
WINDOW_INPUT_NAME = "window"  # a window model's input: float32 [N, length, columns]
OUTPUT_NAME = "failure_probability"
# "" and "ai.onnx" are two names of the standard operator set; both share its version limit.
STANDARD_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"
ALLOWED_DOMAINS = (*STANDARD_DOMAINS, ML_DOMAIN)
# Attacker-chosen names are shown, shortened, so a message stays one readable line.
SHOWN_CHARS = 80
EXPORT_HINT = "export the model again with the training script"


class UnsafeModel(ValueError):
    """An ONNX file failed a check before loading; the message says what is wrong and allowed."""


@dataclass(frozen=True)
class ModelShape:
    """What a checked model takes and gives, as its graph declares it."""

    input_name: str
    # None when the graph leaves the width symbolic and no feature count was asked for.
    feature_count: int | None
    output_names: tuple[str, ...]
    opsets: dict[str, int]


def check_model_bytes(
    data: bytes,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    feature_count: int | None = None,
    label: str = "model",
) -> ModelShape:
    """Check serialized ONNX `data` without touching the file system; raise UnsafeModel if unfit.

    `label` names the model in messages (for example "acme-corp version v2026-...").
    """
    _check_size(len(data), max_bytes, label)
    model = _parse(data, label)
    _check_no_external_data(model, label)
    _check_domains(model, label)
    opsets = _check_versions(model, label)
    width = _check_input(model.graph, feature_count, label)
    outputs = _check_outputs(model.graph, label)
    # Only now: the checker stats external-data paths, and those were refused above.
    _run_checker(data, label)
    return ModelShape(model.graph.input[0].name, width, outputs, opsets)


def check_model_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    feature_count: int | None = None,
    label: str | None = None,
) -> tuple[bytes, ModelShape]:
    """Read at most `max_bytes` + 1 bytes of `path`, check them, and return the bytes checked.

    Load the returned bytes, not the file again, so what runs is what was checked. An OSError
    from opening or reading the file is raised as it is.
    """
    shown = label if label is not None else f"model file {path}"
    data = read_model_file(path, max_bytes=max_bytes, label=shown)
    shape = check_model_bytes(data, max_bytes=max_bytes, feature_count=feature_count, label=shown)
    return data, shape


def read_model_file(path: str | os.PathLike[str], *, max_bytes: int, label: str) -> bytes:
    """The bytes of a regular file no larger than `max_bytes`; a larger one is not read through."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeModel(f"{label} is not a regular file; a model must be a plain .onnx file")
        _check_size(info.st_size, max_bytes, label)
        # The file may grow after fstat; reading one byte more than allowed shows that.
        data = handle.read(max_bytes + 1)
    _check_size(len(data), max_bytes, label)
    return data


def _check_size(size_bytes: int, max_bytes: int, label: str) -> None:
    if size_bytes == 0:
        raise UnsafeModel(f"{label} is empty (0 bytes); the export did not write it, {EXPORT_HINT}")
    if size_bytes > max_bytes:
        raise UnsafeModel(
            f"{label} is {size_bytes} bytes, above the limit of {max_bytes} bytes; "
            "use fewer trees or leaves"
        )


def _parse(data: bytes, label: str) -> ModelProto:
    try:
        # Parses only: unlike onnx.load_model it never follows external-data locations.
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, and its C parser other errors
        reason = _first_line(exc) or type(exc).__name__
        raise UnsafeModel(
            f"{label} is not an ONNX model (protobuf cannot parse it: {reason}); "
            f"the file is damaged or not a model, {EXPORT_HINT}"
        ) from None


def _graphs(model: ModelProto) -> Iterator[GraphProto]:
    """The main graph, training graphs and every subgraph of If, Loop and Scan, at any depth."""
    pending = [model.graph]
    for info in model.training_info:
        pending += [info.initialization, info.algorithm]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                pending += _subgraphs(attribute)


def _subgraphs(attribute: AttributeProto) -> list[GraphProto]:
    # Looked up whatever the attribute's declared type: a mislabelled field must not hide one.
    return [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """The tensors stored in `graph` itself: initializers and tensor-valued node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from _sparse_parts(sparse)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from _sparse_parts(attribute.sparse_tensor)
            for sparse in attribute.sparse_tensors:
                yield from _sparse_parts(sparse)


def _sparse_parts(sparse: SparseTensorProto) -> tuple[TensorProto, TensorProto]:
    return sparse.values, sparse.indices


def _check_no_external_data(model: ModelProto, label: str) -> None:
    for graph in _graphs(model):
        for tensor in _tensors(graph):
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
                location = next((e.value for e in tensor.external_data if e.key == "location"), "")
                raise UnsafeModel(
                    f"{label} keeps tensor {_show(tensor.name)} in external data (location "
                    f"{_show(location)}); only models with every tensor inside the one .onnx "
                    f"file are allowed, {EXPORT_HINT} without external data"
                )


def _check_domains(model: ModelProto, label: str) -> None:
    if len(model.functions):
        names = [f"{f.domain}.{f.name}" for f in model.functions]
        raise UnsafeModel(
            f"{label} defines model-local functions {_show(', '.join(names))}; only operators "
            f"of the domains {list(ALLOWED_DOMAINS)} are allowed, {EXPORT_HINT}"
        )
    for graph in _graphs(model):
        for node in graph.node:
            if node.domain not in ALLOWED_DOMAINS:
                raise UnsafeModel(
                    f"{label} uses operator {_show(node.op_type)} of domain {_show(node.domain)}; "
                    f"only the domains {list(ALLOWED_DOMAINS)} are allowed (a custom domain "
                    f"needs a native library), {EXPORT_HINT}"
                )


def _check_versions(model: ModelProto, label: str) -> dict[str, int]:
    """The model's IR version and opsets must be ones the installed onnx and onnxruntime know."""
    if model.ir_version > onnx.IR_VERSION:
        raise UnsafeModel(
            f"{label} has IR version {model.ir_version}, newer than the {onnx.IR_VERSION} this "
            f"service supports; export it with an older onnx, or upgrade onnx and onnxruntime"
        )
    opsets: dict[str, int] = {}
    limits = supported_opsets()
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise UnsafeModel(
                f"{label} imports the operator set of domain {_show(opset.domain)}; only the "
                f"domains {list(ALLOWED_DOMAINS)} are allowed, {EXPORT_HINT}"
            )
        limit = limits[ML_DOMAIN if opset.domain == ML_DOMAIN else ""]
        if not 1 <= opset.version <= limit:
            raise UnsafeModel(
                f"{label} uses opset {opset.version} of domain {opset.domain or 'ai.onnx'!r}; "
                f"the installed onnxruntime supports 1 to {limit}, export it with a lower "
                "target opset"
            )
        opsets[opset.domain] = opset.version
    return opsets


@functools.cache
def supported_opsets() -> dict[str, int]:
    """The newest opset of "" (ai.onnx) and ai.onnx.ml that the installed onnxruntime loads."""
    try:
        # Not a public API; each domain's newest schema version is what onnxruntime accepts.
        from onnxruntime.capi import _pybind_state

        newest: dict[str, int] = {}
        for schema in _pybind_state.get_all_operator_schema():
            newest[schema.domain] = max(newest.get(schema.domain, 0), schema.since_version)
        return {"": newest[""], ML_DOMAIN: newest[ML_DOMAIN]}
    except (ImportError, AttributeError, KeyError, RuntimeError):
        # A minimal onnxruntime build lacks the schemas: the installed onnx's limits are close.
        return {"": onnx.defs.onnx_opset_version(), ML_DOMAIN: onnx.defs.onnx_ml_opset_version()}


def _run_checker(data: bytes, label: str) -> None:
    try:
        # Bytes, not the ModelProto: the checker would serialize the proto again first.
        onnx.checker.check_model(data, full_check=False)
    except Exception as exc:  # ValidationError, or whatever else the C++ checker raises
        raise UnsafeModel(
            f"{label} fails the ONNX checker: {_first_line(exc)}; {EXPORT_HINT}"
        ) from None


def _check_input(graph: GraphProto, feature_count: int | None, label: str) -> int | None:
    """The one input must be float32 [N, F], or a window model's `window` float32
    [N, length, F]; returns F (the columns of a window), or None when it is symbolic."""
    expected = f"float32 [N, {feature_count if feature_count is not None else 'F'}]"
    windowed = len(graph.input) == 1 and graph.input[0].name == WINDOW_INPUT_NAME
    if windowed:
        expected = f"float32 [N, length, {feature_count if feature_count is not None else 'F'}]"
    names = [_show(i.name) for i in graph.input]
    # The name is not enforced (see "lenient tensor names" in docs/decisions.md); the count is.
    if len(graph.input) != 1:
        raise UnsafeModel(
            f"{label} has inputs [{', '.join(names)}]; the model contract is exactly one input "
            f"({INPUT_NAME!r}) of {expected}, {EXPORT_HINT}"
        )
    kind = graph.input[0].type
    tensor = kind.tensor_type
    if kind.WhichOneof("value") != "tensor_type" or tensor.elem_type != TensorProto.FLOAT:
        raise UnsafeModel(
            f"{label} takes input {INPUT_NAME!r} of type {_type_name(kind)}; the model contract "
            f"is {expected}, {EXPORT_HINT}"
        )
    dims = tensor.shape.dim
    if not tensor.HasField("shape") or len(dims) != (3 if windowed else 2):
        rank = len(dims) if tensor.HasField("shape") else "unknown"
        raise UnsafeModel(
            f"{label} takes input {names[0]} of rank {rank}; the model contract is "
            f"{expected}, {EXPORT_HINT}"
        )
    if windowed and dims[1].HasField("dim_value") and dims[1].dim_value < 1:
        raise UnsafeModel(
            f"{label} takes input {WINDOW_INPUT_NAME!r} of {dims[1].dim_value} buckets; the "
            f"model contract is {expected} with length >= 1, {EXPORT_HINT}"
        )
    last = dims[-1]
    width = last.dim_value if last.HasField("dim_value") else None
    if (width is not None and width < 1) or (feature_count is not None and width != feature_count):
        shown = width if width is not None else _show(last.dim_param or "unknown")
        raise UnsafeModel(
            f"{label} takes input {names[0]} with {shown} features; the model contract is "
            f"{expected}, train it on the configured featureColumns"
        )
    return width


def _check_outputs(graph: GraphProto, label: str) -> tuple[str, ...]:
    names = tuple(output.name for output in graph.output)
    if not all(isinstance(name, str) for name in names):
        # protobuf hands back a name that is not UTF-8 as bytes; no export writes one.
        raise UnsafeModel(
            f"{label} has an output name that is not UTF-8 text among "
            f"[{', '.join(_show(n) for n in names)}]; {EXPORT_HINT}"
        )
    wanted = next((output for output in graph.output if output.name == OUTPUT_NAME), None)
    if wanted is None:
        wanted = next((output for output in graph.output if _is_two_class(output)), None)
    if wanted is None:
        raise UnsafeModel(
            f"{label} has outputs [{', '.join(_show(n) for n in names)}] but no "
            f"{OUTPUT_NAME!r}; the model contract needs float32 {OUTPUT_NAME!r} [N] (or a float32 "
            f"[N, 2] probability output), {EXPORT_HINT}"
        )
    kind = wanted.type
    if kind.WhichOneof("value") != "tensor_type" or kind.tensor_type.elem_type != TensorProto.FLOAT:
        raise UnsafeModel(
            f"{label} gives output {OUTPUT_NAME!r} of type {_type_name(kind)}; the model "
            f"contract needs float32, {EXPORT_HINT}"
        )
    _check_alarm(graph, label)
    return names


def _check_alarm(graph: GraphProto, label: str) -> None:
    """A `failure_alarm` output, where there is one, is the decision: bool [N]."""
    alarm = next((output for output in graph.output if output.name == ALARM_NAME), None)
    if alarm is None:  # a model exported before decisions were part of the file
        return
    kind = alarm.type
    tensor = kind.tensor_type
    is_bool = kind.WhichOneof("value") == "tensor_type" and tensor.elem_type == TensorProto.BOOL
    # An undeclared shape is left to the runtime check; a declared one must be [N].
    rank = len(tensor.shape.dim) if is_bool and tensor.HasField("shape") else 1
    if not is_bool or rank != 1:
        shown = _type_name(kind) if not is_bool else f"tensor(bool) of rank {rank}"
        raise UnsafeModel(
            f"{label} gives output {ALARM_NAME!r} as {shown}; the model contract needs bool [N] "
            f"(the decision {OUTPUT_NAME} >= decision_threshold), {EXPORT_HINT}"
        )


def _is_two_class(output: onnx.ValueInfoProto) -> bool:
    """A float32 [N, 2] output: class probabilities, the failure probability in column 1."""
    tensor = output.type.tensor_type
    dims = tensor.shape.dim
    return (
        output.type.WhichOneof("value") == "tensor_type"
        and tensor.elem_type == TensorProto.FLOAT
        and len(dims) == 2
        and dims[1].dim_value == 2
    )


def _type_name(kind: onnx.TypeProto) -> str:
    if kind.WhichOneof("value") != "tensor_type":
        return str(kind.WhichOneof("value") or "unset")
    try:
        return f"tensor({TensorProto.DataType.Name(kind.tensor_type.elem_type).lower()})"
    except ValueError:
        return f"tensor(element type {kind.tensor_type.elem_type})"


def _show(text: str | bytes) -> str:
    """`text` quoted and shortened: names in a model are chosen by whoever wrote it."""
    if isinstance(text, bytes):  # protobuf gives a string field that is not UTF-8 as bytes
        text = text.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


__all__ = [
    "MAX_MODEL_BYTES",
    "ModelShape",
    "UnsafeModel",
    "check_model_bytes",
    "check_model_file",
    "read_model_file",
    "supported_opsets",
]
