"""Model side of the validate stage: check records, ONNX session and contract, latency, memory."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import psutil

from training_tasks.config.derived import evaluate
from training_tasks.config.window_features import WindowSpec
from training_tasks.files import UnsafeFile, read_script_output
from training_tasks.protocol.decision import ALARM_NAME
from training_tasks.stages.validate.recorded import (
    DerivedFeature,
    ModelDecision,
    RunRecord,
    read_decision,
    window_problems,
)

INPUT_NAME = "input"
WINDOW_INPUT_NAME = "window"
OUTPUT_NAME = "failure_probability"
BATCH_ROWS = 1_000
WARMUP_RUNS = 20
SINGLE_ROW_RUNS = 200
BATCH_RUNS = 5
BYTES_PER_MB = 1024 * 1024
# Model files are read whole into memory; past this a file is refused, not loaded.
MAX_MODEL_READ_BYTES = 1 << 30

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Check:
    """One validation check as recorded in validation.json."""

    name: str
    passed: bool
    value: float | str | None
    limit: float | str | None
    detail: str
    # The failed check that kept this one from running; that cause is reported once, not per check.
    blocked_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The check as JSON: name, passed, value, limit, detail."""
        keys = ("name", "passed", "value", "limit", "detail")
        return {key: getattr(self, key) for key in keys}


def not_run(name: str, blocker: str) -> Check:
    """A check that could not run because the check `blocker` failed."""
    return Check(name, False, None, None, f"not run: the {blocker} check failed", blocker)


def at_most(name: str, what: str, value: float, limit: float, unit: str, hint: str = "") -> Check:
    """A check that `value` does not exceed `limit`, worded for people."""
    if value <= limit:
        return Check(name, True, value, limit, f"{what} is {value:.4g} {unit}")
    detail = f"{what} is {value:.4g} {unit}, above the limit {limit:.4g} {unit}{hint}"
    return Check(name, False, value, limit, detail)


@dataclass(frozen=True)
class OnnxModel:
    """A loaded ONNX session and where its probability of class 1 comes from."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    # 1 when the probability is column 1 of an [N, 2] output; None when the output is [N].
    probability_column: int | None
    # `failure_alarm`, the decision the file makes, when the model has it.
    alarm_name: str | None = None

    @property
    def output_names(self) -> list[str]:
        """What a prediction service fetches: the probability, and the alarm where there is one."""
        return [self.output_name, *([self.alarm_name] if self.alarm_name else [])]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability of class 1 for each row, as a 1-D float32 array."""
        out = self.session.run([self.output_name], {self.input_name: features})[0]
        return self._probabilities(np.asarray(out), len(features))

    def predict_with_alarm(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, from the same run, the model's own alarms (None without them)."""
        if self.alarm_name is None:
            return self.predict(features), None
        out, alarms = self.session.run(self.output_names, {self.input_name: features})
        alarms = np.asarray(alarms)
        if alarms.dtype != np.bool_ or alarms.shape != (len(features),):
            raise ValueError(
                f"output {self.alarm_name!r} is {alarms.dtype} of shape {alarms.shape} for "
                f"{len(features)} rows, not bool [N]"
            )
        return self._probabilities(np.asarray(out), len(features)), alarms

    def _probabilities(self, out: np.ndarray, rows: int) -> np.ndarray:
        if out.ndim == 2 and self.probability_column is not None and out.shape[1] == 2:
            out = out[:, self.probability_column]
        elif out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (rows,):
            raise ValueError(f"output {self.output_name!r} has shape {out.shape} for {rows} rows")
        return out


def open_session(model_bytes: bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session of the model; raises whatever onnxruntime raises."""
    options = ort.SessionOptions()
    # Errors only: an export that keeps its [1]-shaped label output warns on every run otherwise.
    options.log_severity_level = 3
    # Workers share cores with training subprocesses; spinning threads would steal them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )


def bind_contract(
    session: ort.InferenceSession, width: int, window: tuple[int, int] | None = None
) -> tuple[OnnxModel | None, Check]:
    """Check the input/output contract; the model comes back only when it can be fed and read.

    `window` (length, columns): the model takes windows [N, length, columns], not rows."""
    problems, notes = _input_problems(session, width, window)
    output_name, column, output_note = _pick_output(session)
    (problems if output_name is None else notes).extend([output_note] if output_note else [])
    if problems:
        return None, Check("contract", False, None, None, "; ".join(problems))
    outputs = {out.name for out in session.get_outputs()}
    alarm = ALARM_NAME if ALARM_NAME in outputs else None
    model = OnnxModel(session, session.get_inputs()[0].name, str(output_name), column, alarm)
    with_alarm = f" and {ALARM_NAME!r} bool [N]" if alarm else ""
    shape = _shown_shape(width, window)
    detail = "; ".join(notes) or f"input float {shape}, output {OUTPUT_NAME!r} [N]{with_alarm}"
    return model, Check("contract", True, str(output_name), OUTPUT_NAME, detail)


def _shown_shape(width: int, window: tuple[int, int] | None) -> str:
    return f"[N, {width}]" if window is None else f"[N, {window[0]}, {window[1]}]"


def _input_problems(
    session: ort.InferenceSession, width: int, window: tuple[int, int] | None
) -> tuple[list[str], list[str]]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return [f"the model has {len(inputs)} inputs; it must have exactly one"], []
    arg, problems, notes = inputs[0], [], []
    if arg.type != "tensor(float)":
        problems.append(f"input {arg.name!r} is {arg.type}; it must be tensor(float)")
    wanted = (
        [(width, "features", "featureColumns has")]
        if window is None
        else [
            (window[0], "buckets", "windows.length is"),
            (window[1], "columns", "windows.columns has"),
        ]
    )
    if len(arg.shape) != 1 + len(wanted):
        shape = _shown_shape(width, window)
        kind = "" if window is None else " (the window of each example)"
        problems.append(f"input {arg.name!r} has shape {arg.shape}; it must be {shape}{kind}")
    else:
        for dim, (size, unit, what) in zip(arg.shape[1:], wanted, strict=True):
            if isinstance(dim, int) and dim != size:
                problems.append(f"input {arg.name!r} takes {dim} {unit}, {what} {size}")
    expected = INPUT_NAME if window is None else WINDOW_INPUT_NAME
    if arg.name != expected:
        notes.append(f"the input is named {arg.name!r}, not {expected!r}")
    return problems, notes


def _pick_output(session: ort.InferenceSession) -> tuple[str | None, int | None, str]:
    outputs = {out.name: out for out in session.get_outputs()}
    wanted = outputs.get(OUTPUT_NAME)
    if wanted is not None:
        if wanted.type != "tensor(float)":
            return None, None, f"output {OUTPUT_NAME!r} is {wanted.type}; it must be tensor(float)"
        return OUTPUT_NAME, None, ""
    for out in outputs.values():
        if out.type == "tensor(float)" and len(out.shape) == 2 and out.shape[1] == 2:
            note = f"no output {OUTPUT_NAME!r}: the probability is column 1 of output {out.name!r}"
            return out.name, 1, note
    problem = f"no output {OUTPUT_NAME!r} nor an [N, 2] probability output in {list(outputs)}"
    return None, None, problem


def recorded_features(session: ort.InferenceSession) -> list[str] | None:
    """The feature_columns a model records in its metadata_props, or None."""
    try:
        recorded = json.loads(session.get_modelmeta().custom_metadata_map["feature_columns"])
    except (KeyError, ValueError, RecursionError):  # RecursionError: nested too deep to read
        return None
    return recorded if isinstance(recorded, list) else None


def metadata_check(
    session: ort.InferenceSession,
    org_id: str,
    version: str,
    features: list[str],
    run: RunRecord | None = None,
    window: WindowSpec | None = None,
) -> tuple[Check, ModelDecision]:
    """The model's metadata_props must name the configured features, organization and version,
    and the derived features and decision threshold the run recorded; returns its decision too.

    A window model (`window`, the run's spec) must also record that spec and the statistics'
    names, and its derived features are expressions over those statistics."""
    meta, problems = session.get_modelmeta().custom_metadata_map, []
    recorded = recorded_features(session)
    if recorded is None:
        problems.append("the model does not record feature_columns as a JSON list in its metadata")
    elif recorded != features:
        problems.append(f"the model was trained on {recorded} but featureColumns is {features}")
    for key, expected in (("organization_id", org_id), ("version", version)):
        if key not in meta:
            problems.append(f"the model does not record {key} in its metadata")
        elif meta[key] != expected:
            problems.append(f"the model's {key} is {meta[key]!r}, not {expected!r}")
    if window is not None:
        problems += window_problems(meta, window)
    named = features if window is None else window.feature_names()
    decision = read_decision(meta, run or RunRecord(), named)
    problems += decision.problems
    if problems:
        return Check("metadata", False, None, None, "; ".join(problems)), decision
    spec = "" if window is None else ", window"
    detail = (
        f"feature_columns, organization_id, version{spec}, derived_features and "
        f"decision_threshold match (decision threshold {decision.threshold!r}, "
        f"{len(decision.derived_features)} derived features)"
    )
    return Check("metadata", True, None, None, detail), decision


def rss_bytes() -> int:
    """Resident memory of this process."""
    return int(psutil.Process().memory_info().rss)


def release_free_heap() -> None:
    """Return freed heap pages to the OS, so a new session cannot hide in memory freed earlier."""
    # Without glibc the RSS difference can only under-count the session.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@functools.cache
def prime_runtime() -> None:
    """Run a one-node model once, so onnxruntime's own set-up never counts as a model's memory."""
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "prime",
        [tensor("x", onnx.TensorProto.FLOAT, [None])],
        [tensor("y", onnx.TensorProto.FLOAT, [None])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for any onnxruntime this service supports
    open_session(model.SerializeToString()).run(None, {"x": np.zeros(1, dtype=np.float32)})


def warm_up(model: OnnxModel, sample: np.ndarray) -> None:
    """Run one row and one batch so lazy allocations happen before anything is measured."""
    model.predict(sample[:1])
    model.predict(sample[:BATCH_ROWS])


def measure_latency(
    model: OnnxModel, sample: np.ndarray, timer_ns: Callable[[], int] = time.perf_counter_ns
) -> dict[str, float]:
    """Single-row p50/p99 over SINGLE_ROW_RUNS runs and the median time of one batch."""
    run, names, feed_name = model.session.run, model.output_names, model.input_name
    rows = [sample[i % len(sample)][None, :] for i in range(SINGLE_ROW_RUNS)]
    batch = sample[:BATCH_ROWS]
    for row in rows[:WARMUP_RUNS]:
        run(names, {feed_name: row})
    single_ns, batch_ns = [], []
    for row in rows:
        start = timer_ns()
        run(names, {feed_name: row})
        single_ns.append(timer_ns() - start)
    for _ in range(BATCH_RUNS):
        start = timer_ns()
        run(names, {feed_name: batch})
        batch_ns.append(timer_ns() - start)
    p50_ns, p99_ns = np.percentile(single_ns, [50, 99])
    batch_median_ns = float(np.median(batch_ns))
    return {
        "singleRowRuns": SINGLE_ROW_RUNS,
        "singleRowP50Ms": float(p50_ns) / 1e6,
        "singleRowP99Ms": float(p99_ns) / 1e6,
        "batchRows": len(batch),
        "batchRuns": BATCH_RUNS,
        "batchMs": batch_median_ns / 1e6,
        "batchPerRowUs": batch_median_ns / 1e3 / len(batch),
    }


def open_native(
    path: Path | None, features: Sequence[str], derived: Sequence[DerivedFeature], limit: float
) -> tuple[Predictor | None, Check | None, list[tuple[str, float]] | None]:
    """The native booster as a predictor of the raw `features`, or the final parity check when
    there is none to use; and the total gain of each feature's splits, for the report. The
    booster was trained on [raw..., derived...]: the derived columns are computed here by the
    service's own evaluator, the ONNX graph computes its own."""
    if path is None or not os.path.lexists(path):
        return None, Check("parity", True, None, limit, "skipped (no native model)"), None
    try:  # LightGBM gets the text, never a path the script could have made a link or FIFO
        text = read_script_output(Path(path), MAX_MODEL_READ_BYTES, "the native model").decode()
        booster = lgb.Booster(model_str=text)
    except (UnsafeFile, OSError, UnicodeDecodeError) as exc:
        detail = f"the native model {path} cannot be read: {exc}"
        return None, Check("parity", False, None, limit, detail), None
    except lgb.basic.LightGBMError as exc:
        detail = f"the native model {path} cannot be loaded by LightGBM: {str(exc).strip()}"
        return None, Check("parity", False, None, limit, detail), None
    width = len(features) + len(derived)
    if booster.num_feature() != width:
        split = f" ({len(features)} raw and {len(derived)} derived)" if derived else ""
        detail = (
            f"the native model {path} takes {booster.num_feature()} features, not {width}{split}"
        )
        return None, Check("parity", False, None, limit, detail), None

    def predict(features: np.ndarray) -> np.ndarray:
        out = np.asarray(booster.predict(features))
        out = out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out
        if out.shape != (len(features),):
            raise ValueError(
                f"the native model returned shape {out.shape} for {len(features)} rows"
            )
        return out

    return with_derived(predict, features, derived), None, _gains(booster, features, derived)


def _gains(
    booster: lgb.Booster, features: Sequence[str], derived: Sequence[DerivedFeature]
) -> list[tuple[str, float]]:
    """Each input's total split gain, named as the run names it (the booster's names may not be)."""
    names = [*features, *(str(feature["name"]) for feature in derived)]
    gains = booster.feature_importance(importance_type="gain")
    return [(name, float(gain)) for name, gain in zip(names, gains, strict=True)]


def with_derived(
    predict: Predictor, features: Sequence[str], derived: Sequence[DerivedFeature]
) -> Predictor:
    """`predict` of [raw..., derived...] as a predictor of the raw columns alone."""
    if not derived:
        return predict

    def predict_raw(raw: np.ndarray) -> np.ndarray:
        columns = {name: raw[:, j] for j, name in enumerate(features)}
        return predict(np.column_stack([raw, *evaluate(derived, columns)]))

    return predict_raw
