"""Attacks on the ONNX gate: every hostile or broken file is refused with its reason, unread."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.support.onnx_fixtures import FEATURES, make_data, to_onnx, train_booster
from training_tasks.protocol.onnx_checks import (
    ModelShape,
    UnsafeModel,
    check_model_bytes,
    check_model_file,
    supported_opsets,
)

LABEL = "acme-corp version v2026-06-01T12-00-00-000Z_a1b2c3d4"
WIDTH = 4
OPSET = 15


# --- models ----------------------------------------------------------------------------------


@functools.cache
def exported_model() -> bytes:
    """A real LightGBM failure classifier exported by the model contract (about 40 KB)."""
    features, labels = make_data(400)
    return to_onnx(train_booster(features, labels, rounds=40)).SerializeToString()


@functools.cache
def small_exported_model() -> bytes:
    """The same export with few trees, so random mutations hit its structure, not its numbers."""
    features, labels = make_data(200)
    return to_onnx(train_booster(features, labels, rounds=3)).SerializeToString()


def weights(name: str = "w") -> TensorProto:
    return numpy_helper.from_array(np.full(WIDTH, 0.5, dtype=np.float32), name)


def scoring_nodes(weights_name: str = "w") -> list[onnx.NodeProto]:
    """input [N, 4] @ w [4] -> sigmoid -> failure_probability [N]."""
    return [
        helper.make_node("MatMul", ["input", weights_name], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["failure_probability"]),
    ]


def tiny_model(
    *,
    nodes: list[onnx.NodeProto] | None = None,
    initializers: list[TensorProto] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A valid contract model; each attack replaces one part of it."""
    graph = helper.make_graph(
        scoring_nodes() if nodes is None else nodes,
        "failure_classifier",
        inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", WIDTH])],
        outputs or [helper.make_tensor_value_info("failure_probability", TensorProto.FLOAT, ["N"])],
        [weights()] if initializers is None else initializers,
    )
    imports = [helper.make_opsetid(domain, v) for domain, v in (opsets or {"": OPSET}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def external(tensor: TensorProto, location: str) -> TensorProto:
    """`tensor` with its data moved out of the file, to `location`."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def refused(model: onnx.ModelProto | bytes, **options: Any) -> str:
    """The reason the gate gives for refusing `model`; fails the test if it lets it through."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with pytest.raises(UnsafeModel) as caught:
        check_model_bytes(data, label=LABEL, **options)
    message = str(caught.value)
    assert message.startswith(LABEL), message
    return message


@pytest.fixture
def nothing_may_touch_external_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything that opens or stats external-data files is called.

    The onnx checker stats an external-data location (relative to the working directory for a
    model given as bytes), and onnxruntime opens it; onnx.load_external_data_for_model reads it.
    """

    def forbidden(what: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            pytest.fail(f"{what} was called for a model with external data")

        return call

    monkeypatch.setattr(onnx.checker, "check_model", forbidden("onnx.checker.check_model"))
    monkeypatch.setattr(onnx, "load_external_data_for_model", forbidden("load_external_data"))
    monkeypatch.setattr(onnxruntime, "InferenceSession", forbidden("onnxruntime"))
    yield


# --- what passes -----------------------------------------------------------------------------


def test_an_exported_lightgbm_model_passes_and_reports_its_shape() -> None:
    shape = check_model_bytes(exported_model(), feature_count=len(FEATURES), label=LABEL)
    assert shape.input_name == "input"
    assert shape.feature_count == len(FEATURES)
    assert "failure_probability" in shape.output_names
    assert shape.opsets.keys() <= {"", "ai.onnx.ml"}


def test_the_width_is_reported_without_being_asked_for() -> None:
    assert check_model_bytes(exported_model()).feature_count == len(FEATURES)


def test_a_symbolic_width_is_reported_as_unknown() -> None:
    symbolic = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "F"])
    assert (
        check_model_bytes(tiny_model(inputs=[symbolic]).SerializeToString()).feature_count is None
    )


def test_the_hand_built_baseline_passes_so_each_attack_below_changes_one_thing() -> None:
    shape = check_model_bytes(tiny_model().SerializeToString(), feature_count=WIDTH)
    assert shape == ModelShape("input", WIDTH, ("failure_probability",), {"": OPSET})


def test_extra_outputs_such_as_a_label_are_allowed() -> None:
    label = helper.make_tensor_value_info("label", TensorProto.FLOAT, ["N"])
    nodes = [*scoring_nodes(), helper.make_node("Round", ["failure_probability"], ["label"])]
    probability = helper.make_tensor_value_info("failure_probability", TensorProto.FLOAT, ["N"])
    shape = check_model_bytes(
        tiny_model(nodes=nodes, outputs=[label, probability]).SerializeToString()
    )
    assert shape.output_names == ("label", "failure_probability")


def test_a_model_file_is_read_once_and_the_checked_bytes_come_back(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(exported_model())
    data, shape = check_model_file(path, feature_count=len(FEATURES))
    assert data == exported_model() and shape.feature_count == len(FEATURES)


# --- files that are not models ---------------------------------------------------------------


def test_an_empty_file_is_refused() -> None:
    assert "empty" in refused(b"")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00" * 64, id="zeros"),
        pytest.param(b"\xff" * 64, id="0xff"),
        pytest.param(b"<!DOCTYPE html><html>403 Forbidden</html>\n", id="an html error page"),
        pytest.param(
            bytes(np.random.default_rng(7).integers(0, 256, 2048, dtype=np.uint8)), id="random"
        ),
    ],
)
def test_bytes_that_are_not_a_model_are_refused(content: bytes) -> None:
    refused(content)


def test_a_truncated_model_is_refused_as_not_a_model() -> None:
    data = exported_model()
    assert "is not an ONNX model" in refused(data[: len(data) // 2 + 1])


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    message = refused(exported_model(), max_bytes=1024)
    assert f"{len(exported_model())} bytes" in message and "limit of 1024 bytes" in message


def test_a_file_over_the_size_limit_is_refused_without_reading_it_through(tmp_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: big on paper, nothing to read
    with pytest.raises(UnsafeModel, match="above the limit of 4096 bytes"):
        check_model_file(path, max_bytes=4096)


def test_a_fifo_in_place_of_the_model_file_is_refused_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    os.mkfifo(path)
    with pytest.raises(UnsafeModel, match="not a regular file"):
        check_model_file(path)


def test_a_model_the_onnx_checker_rejects_is_refused_with_the_checkers_reason() -> None:
    # Sigmoid reads "score" before MatMul writes it: not topologically sorted.
    backwards = tiny_model(nodes=list(reversed(scoring_nodes())))
    message = refused(backwards)
    assert "fails the ONNX checker" in message and "topologically sorted" in message
    assert "\n" not in message


# --- external data: the file-read and path-traversal vector ----------------------------------


@pytest.mark.usefixtures("nothing_may_touch_external_files")
@pytest.mark.parametrize(
    "location", ["../../../../etc/passwd", "/etc/passwd", "weights.bin", "C:\\Windows\\win.ini"]
)
def test_an_initializer_in_external_data_is_refused_without_reading_it(location: str) -> None:
    message = refused(tiny_model(initializers=[external(weights(), location)]))
    assert "external data" in message and repr(location) in message and "'w'" in message


@pytest.mark.usefixtures("nothing_may_touch_external_files")
def test_external_data_beside_the_working_directory_is_refused_though_the_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The case the onnx checker alone lets through: it finds the file and passes the model.
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    monkeypatch.chdir(tmp_path)
    assert "external data" in refused(tiny_model(initializers=[external(weights(), "weights.bin")]))


@pytest.mark.usefixtures("nothing_may_touch_external_files")
@pytest.mark.parametrize("how", ["location flag only", "external_data entries only"])
def test_either_half_of_an_external_data_reference_is_enough_to_refuse(how: str) -> None:
    tensor = external(weights(), "../secret")
    if how == "location flag only":
        tensor.ClearField("external_data")
    else:
        tensor.data_location = TensorProto.DEFAULT
    assert "external data" in refused(tiny_model(initializers=[tensor]))


def constant(tensor: TensorProto, output: str) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value=tensor)


def in_if(branch_nodes: list[onnx.NodeProto], branch_output: str) -> list[onnx.NodeProto]:
    """Weights chosen by an If whose then-branch holds `branch_nodes`; scored as usual after it."""
    out = helper.make_tensor_value_info(branch_output, TensorProto.FLOAT, [WIDTH])
    then_branch = helper.make_graph(branch_nodes, "then", [], [out])
    plain = helper.make_graph(
        [constant(weights("w_else"), "w_else")],
        "else",
        [],
        [helper.make_tensor_value_info("w_else", TensorProto.FLOAT, [WIDTH])],
    )
    condition = numpy_helper.from_array(np.array(True), "always")
    pick = helper.make_node(
        "If", ["always"], ["w_picked"], then_branch=then_branch, else_branch=plain
    )
    return [constant(condition, "always"), pick, *scoring_nodes("w_picked")]


def external_in_nested_loop() -> list[onnx.NodeProto]:
    """External weights two levels down: a Constant in a Loop body inside an If branch."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            constant(external(weights("w_loop"), "/proc/self/environ"), "w_loop"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w_loop", TensorProto.FLOAT, [WIDTH]),
        ],
    )
    trips = numpy_helper.from_array(np.array(1, dtype=np.int64), "trips")
    loop = helper.make_node("Loop", ["trips", ""], ["w_scan"], body=body)
    last = numpy_helper.from_array(np.array([0], dtype=np.int64), "first")
    return in_if(
        [
            constant(trips, "trips"),
            loop,
            constant(last, "first"),
            helper.make_node("Gather", ["w_scan", "first"], ["w_rows"], axis=0),
            helper.make_node("Squeeze", ["w_rows", "first"], ["w_then"]),
        ],
        "w_then",
    )


def sparse_external() -> onnx.SparseTensorProto:
    values = external(numpy_helper.from_array(np.ones(1, dtype=np.float32), "w"), "../v.bin")
    indices = numpy_helper.from_array(np.array([0], dtype=np.int64), "w_indices")
    return helper.make_sparse_tensor(values, indices, [WIDTH])


@pytest.mark.usefixtures("nothing_may_touch_external_files")
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: tiny_model(
                nodes=[constant(external(weights(), "../../x"), "w"), *scoring_nodes()],
                initializers=[],
            ),
            id="a Constant node's value",
        ),
        pytest.param(
            lambda: tiny_model(
                nodes=in_if([constant(external(weights("w_then"), "../../x"), "w_then")], "w_then"),
                initializers=[],
            ),
            id="a Constant inside an If branch",
        ),
        pytest.param(
            lambda: tiny_model(nodes=external_in_nested_loop(), initializers=[]),
            id="a Constant in a Loop body inside an If branch",
        ),
        pytest.param(
            lambda: _with_sparse_initializer(tiny_model(initializers=[])),
            id="a sparse initializer",
        ),
    ],
)
def test_external_data_hidden_anywhere_in_the_graph_is_refused(
    build: Callable[[], onnx.ModelProto],
) -> None:
    assert "external data" in refused(build())


def _with_sparse_initializer(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.sparse_initializer.append(sparse_external())
    return model


# --- operators from outside the standard domains ---------------------------------------------


def test_an_operator_of_a_custom_domain_is_refused() -> None:
    evil = helper.make_node("LoadLibrary", ["input"], ["score"], domain="com.evil")
    model = tiny_model(
        nodes=[evil, helper.make_node("Sigmoid", ["score"], ["failure_probability"])],
        opsets={"": OPSET, "com.evil": 1},
    )
    message = refused(model)
    assert "'com.evil'" in message and "'LoadLibrary'" in message


def test_a_custom_domain_operator_hidden_in_a_subgraph_is_refused() -> None:
    hidden = helper.make_node("Weights", [], ["w_then"], domain="com.evil")
    model = tiny_model(nodes=in_if([hidden], "w_then"), initializers=[], opsets={"": OPSET})
    assert "'com.evil'" in refused(model)


def test_importing_a_custom_operator_set_is_refused_even_unused() -> None:
    assert "'com.evil'" in refused(tiny_model(opsets={"": OPSET, "com.evil": 1}))


def test_model_local_functions_are_refused() -> None:
    model = tiny_model()
    model.functions.append(
        helper.make_function("local", "Score", ["x"], ["y"], [], [helper.make_opsetid("", OPSET)])
    )
    assert "model-local functions" in refused(model)


def test_an_opset_newer_than_onnxruntime_supports_is_refused() -> None:
    newest = supported_opsets()[""]
    message = refused(tiny_model(opsets={"": newest + 1}))
    assert f"opset {newest + 1}" in message and f"1 to {newest}" in message


def test_an_ir_version_newer_than_onnx_knows_is_refused() -> None:
    model = tiny_model()
    model.ir_version = onnx.IR_VERSION + 1
    assert "IR version" in refused(model)


# --- the model contract: one input float32 [N, F], an output failure_probability -------------


def value(name: str, elem_type: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        pytest.param(
            [value("input", TensorProto.FLOAT, ["N", 4]), value("extra", TensorProto.FLOAT, ["N"])],
            "'extra'",
            id="two inputs",
        ),
        pytest.param([value("input", TensorProto.DOUBLE, ["N", 4])], "tensor(double)", id="dtype"),
        pytest.param([value("input", TensorProto.FLOAT, ["N", 4, 1])], "rank 3", id="rank 3"),
        pytest.param([value("input", TensorProto.FLOAT, None)], "rank unknown", id="no shape"),
        pytest.param(
            [value("input", TensorProto.FLOAT, ["N", 4]), value("key", TensorProto.FLOAT, [1])],
            "'key'",
            id="two inputs",
        ),
    ],
)
def test_an_input_that_breaks_the_contract_is_refused(
    inputs: list[onnx.ValueInfoProto], expected: str
) -> None:
    message = refused(tiny_model(inputs=inputs))
    assert expected in message and "float32 [N, F]" in message


def test_a_model_for_another_feature_count_is_refused() -> None:
    message = refused(tiny_model(), feature_count=7)
    assert "with 4 features" in message and "float32 [N, 7]" in message


def test_a_symbolic_width_is_refused_when_the_feature_count_is_known() -> None:
    symbolic = value("input", TensorProto.FLOAT, ["N", "F"])
    assert "with 'F' features" in refused(tiny_model(inputs=[symbolic]), feature_count=WIDTH)


def test_a_model_without_failure_probability_is_refused() -> None:
    nodes = [helper.make_node("MatMul", ["input", "w"], ["score"])]
    message = refused(tiny_model(nodes=nodes, outputs=[value("score", TensorProto.FLOAT, ["N"])]))
    assert "no 'failure_probability'" in message and "'score'" in message


def test_a_failure_probability_of_the_wrong_type_is_refused() -> None:
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["p"]),
        helper.make_node("Cast", ["p"], ["failure_probability"], to=TensorProto.DOUBLE),
    ]
    outputs = [value("failure_probability", TensorProto.DOUBLE, ["N"])]
    message = refused(tiny_model(nodes=nodes, outputs=outputs))
    assert "output 'failure_probability' of type tensor(double)" in message


def test_a_huge_name_is_shortened_in_the_message() -> None:
    message = refused(tiny_model(inputs=[value("x" * 100_000, TensorProto.FLOAT, ["N", 4])]))
    assert len(message) < 1_000


@pytest.mark.parametrize("name", ["label", "x" * 200])
def test_names_that_are_not_utf8_are_refused_with_a_readable_message(name: str) -> None:
    extra = [value(name, TensorProto.FLOAT, ["N"])]
    outputs = [value("failure_probability", TensorProto.FLOAT, ["N"]), *extra]
    nodes = [*scoring_nodes(), helper.make_node("Identity", ["failure_probability"], [name])]
    data = tiny_model(nodes=nodes, outputs=outputs).SerializeToString()
    broken = name.encode()[:-2] + b"\xff\xfe"  # same length, so the protobuf stays well-formed
    message = refused(data.replace(name.encode(), broken))
    assert "not UTF-8" in message and "'failure_probability'" in message
    assert len(message) < 1_000


# --- fuzzing: whatever the bytes, the answer is a shape or UnsafeModel -----------------------


def verdict(data: bytes) -> None:
    try:
        shape = check_model_bytes(data, label=LABEL)
    except UnsafeModel as exc:
        assert str(exc).startswith(LABEL)
    else:
        assert isinstance(shape, ModelShape)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_get_a_verdict_and_nothing_else(data: bytes) -> None:
    verdict(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The small exported model with a few bytes flipped, cut, inserted or dropped."""
    data = bytearray(small_exported_model())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
        if not data:
            break
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_model_gets_a_verdict_and_nothing_else(data: bytes) -> None:
    verdict(data)


def test_tensor_names_are_not_enforced_but_a_two_class_output_must_be_float32_n_by_2() -> None:
    """Like the validate stage: lenient names, strict types (docs/decisions.md)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["probabilities"])],
        "g",
        [value("features", TensorProto.FLOAT, ["N", 2])],
        [value("probabilities", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    shape = check_model_bytes(model.SerializeToString())
    assert shape.input_name == "features" and shape.output_names == ("probabilities",)
