"""Load one deployed ONNX model: path and sha256 checks, metadata checks, warm-up, inference.

A model takes single readings (input `input` [N, features]) or windows (input `window`
[N, length, columns], with its metadata `window` saying the length, interval and columns; see
`window`); which one is read from the file, and a file whose input and metadata disagree is
refused.

A model's decision is its own: the `failure_alarm` output where it has one, made in the graph at
its `decision_threshold`; a model exported without them decides at probability >= 0.5.

The file is read once into memory; the sha256 is computed over those bytes and the session is
built from the same bytes, so the file cannot change between the check and the load. A file
sealed by the training service (ML_MASTER_KEYS set there) is opened in memory with the keys in
this process's own ML_MASTER_KEYS; its organization and version must match the deployment's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training_tasks.errors import SettingsError
from training_tasks.protocol.decision import ALARM_NAME, BadThreshold, threshold_of
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.ids import ORG_ID_PATTERN
from training_tasks.protocol.keyring import Keyring, SealedDataError
from training_tasks.protocol.onnx_checks import UnsafeModel, check_model_bytes
from workers.model_cache.errors import ModelRejected
from workers.model_cache.window import (
    WINDOW_INPUT,
    WindowInput,
    as_windows,
    check_window_model,
    window_of,
)

PROBABILITY_OUTPUT = "failure_probability"
INPUT_NAME = "input"


def check_org_id(org_id: str) -> str:
    """Return `org_id` if it is a safe organization id, else raise ValueError."""
    if not isinstance(org_id, str) or not ORG_ID_PATTERN.fullmatch(org_id):
        raise ValueError(
            f"{org_id!r} is not a valid organization id; use 1-63 lowercase letters, digits "
            "and inner hyphens (for example 'acme-corp')"
        )
    return org_id


def check_model_path(ml_base_path: Path, org_id: str, model_path: str | Path) -> Path:
    """Resolve `model_path` (symlinks too) and refuse it unless it is a file in `models/<org>/`.

    A relative path is taken relative to `ml_base_path`.
    """
    root = (Path(ml_base_path) / "models" / check_org_id(org_id)).resolve()
    candidate = Path(model_path)
    if not candidate.is_absolute():
        candidate = Path(ml_base_path) / candidate
    resolved = candidate.resolve()
    if root not in resolved.parents:
        raise ModelRejected(
            f"model path {model_path} resolves to {resolved}, outside {root}, the model folder "
            f"of organization {org_id}; deploy the model into that folder"
        )
    if not resolved.is_file():
        raise ModelRejected(
            f"model file {model_path} of organization {org_id} is missing; check that "
            f"{root} is the same folder the training service deploys to (ML_BASE_PATH)"
        )
    return resolved


def check_sha256(data: bytes, expected: str, path: Path) -> None:
    """Raise ModelRejected unless the sha256 of `data` is `expected`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ModelRejected(
            f"model file {path} has sha256 {actual}, the deployment says {expected}; the file "
            "was changed or only partly copied, deploy the version again"
        )


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed ONNX session and what it serves; immutable once built."""

    organization_id: str
    version: str
    sequence: int
    path: Path
    feature_columns: tuple[str, ...]
    loaded_at: str
    session: ort.InferenceSession = field(repr=False)
    input_name: str
    output_name: str
    probability_pair: bool
    threshold: float  # the decision threshold of the model's metadata (0.5 for an old model)
    alarm_name: str | None  # its `failure_alarm` output; None for a model exported without one
    window: WindowInput | None = None  # what a window model takes; None: single readings
    # Made once, not per call. A float32 array of one element: numpy compares with it (broadcast)
    # in about half the time it takes with a scalar, which is half a single-row call's overhead.
    _threshold32: np.ndarray = field(init=False, repr=False)
    _outputs: list[str] = field(init=False, repr=False)
    # The width a row must have. -1 for a window model: its input never passes as rows, so the
    # window check runs off the row path and costs a row nothing.
    _row_width: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        outputs = (
            [self.output_name] if self.alarm_name is None else [self.output_name, self.alarm_name]
        )
        object.__setattr__(self, "_threshold32", np.array([self.threshold], dtype=np.float32))
        object.__setattr__(self, "_outputs", outputs)
        width = -1 if self.window is not None else len(self.feature_columns)
        object.__setattr__(self, "_row_width", width)

    @property
    def has_alarm(self) -> bool:
        """Whether the model makes its decision itself (a `failure_alarm` output)."""
        return self.alarm_name is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: (features,) of a row, or (length, columns) of a window."""
        return self.window.shape if self.window is not None else (len(self.feature_columns),)

    def predict(self, rows: Any) -> np.ndarray:
        """Failure probabilities (float32, one per row or window); see `decide`."""
        return self.decide(rows)[0]

    def decide(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Failure probabilities and alarms (bool) of `rows`, from one run of the model.

        `rows` is 2-D [n_rows, features] in feature-column order, or for a window model windows
        [n_windows, length, columns] (or one window [length, columns]). The alarms are the
        model's own `failure_alarm` output, or probability >= its threshold for a model without
        one.
        """
        # One function on purpose: this is every prediction's path, and calls cost here.
        features = np.asarray(rows, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self._row_width:
            features = self._not_rows(features)
        n_rows = len(features)
        outputs = self.session.run(self._outputs, {self.input_name: features})
        # Reshaped only when not [N] already: numpy is slower on the view a reshape makes.
        probabilities = np.asarray(outputs[0])
        if self.probability_pair:
            probabilities = probabilities[:, 1]
        elif probabilities.shape != (n_rows,):
            probabilities = probabilities.reshape(n_rows)
        if self.alarm_name is None:
            # In float32, as the GreaterOrEqual of a model with the output compares.
            return probabilities, np.greater_equal(probabilities, self._threshold32)
        alarms = np.asarray(outputs[1])
        return probabilities, alarms if alarms.shape == (n_rows,) else alarms.reshape(n_rows)

    def _not_rows(self, features: np.ndarray) -> np.ndarray:
        """The windows of a window model; ValueError saying what to send otherwise."""
        if self.window is not None:
            return as_windows(features, self.window, self.organization_id, self.version)
        raise ValueError(
            f"rows must be 2-D [n_rows, {self._row_width}] in the order "
            f"{list(self.feature_columns)} (organization {self.organization_id}, version "
            f"{self.version}); got shape {list(features.shape)}"
        )


def load_model(
    ml_base_path: Path,
    org_id: str,
    deployment: Deployment,
    *,
    intra_op_threads: int = 1,
    keyring: Keyring | None = None,
) -> LoadedModel:
    """Check, open, load and warm the model of `deployment`; raise ModelRejected saying why not.

    A sealed file is opened with `keyring` (default: ML_MASTER_KEYS of this process).
    """
    if deployment.organizationId != org_id:
        raise ModelRejected(
            f"the deployment names organization {deployment.organizationId}, not {org_id}; "
            "publish it on that organization's own key and channel"
        )
    path = check_model_path(ml_base_path, org_id, deployment.modelPath)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRejected(f"cannot read model file {path}: {exc}; check its permissions") from exc
    check_sha256(data, deployment.sha256, path)
    onnx_bytes = _open(data, path, deployment, keyring)
    try:  # no external data, no custom operators, the contract's shape: before onnxruntime
        check_model_bytes(
            onnx_bytes, label=f"organization {org_id} version {deployment.version} ({path})"
        )
    except UnsafeModel as exc:
        raise ModelRejected(f"{exc}; deploy a valid version") from None
    session = _session(onnx_bytes, path, intra_op_threads)
    columns = _check_metadata(session, org_id, deployment, path)
    input_name, window = _input(session, path, columns)
    output_name, pair = _output(session, path)
    threshold, alarm_name = _decision(session, path)
    model = LoadedModel(
        organization_id=org_id,
        version=deployment.version,
        sequence=deployment.sequence,
        path=path,
        feature_columns=columns,
        loaded_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        session=session,
        input_name=input_name,
        output_name=output_name,
        probability_pair=pair,
        threshold=threshold,
        alarm_name=alarm_name,
        window=window,
    )
    _warm(model)
    return model


def _open(data: bytes, path: Path, deployment: Deployment, keyring: Keyring | None) -> bytes:
    """The ONNX bytes of the file's contents: a sealed file is decrypted in memory only."""
    try:
        keyring = keyring or Keyring.from_env()
        return keyring.open_model(data, deployment.organizationId, deployment.version)
    except (SealedDataError, SettingsError) as exc:
        raise ModelRejected(f"model file {path} cannot be opened: {exc}") from None


def _session(data: bytes, path: Path, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning pool threads would burn the CPU the embedding service needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelRejected(
            f"model file {path} is not a loadable ONNX model ({type(exc).__name__}: "
            f"{str(exc)[:300]}); deploy a valid version"
        ) from exc


def _check_metadata(
    session: ort.InferenceSession, org_id: str, deployment: Deployment, path: Path
) -> tuple[str, ...]:
    props = session.get_modelmeta().custom_metadata_map
    for key, expected in (("organization_id", org_id), ("version", deployment.version)):
        if props.get(key) != expected:
            raise ModelRejected(
                f"model file {path} has metadata {key}={props.get(key)!r}, the deployment "
                f"expects {expected!r}; the file belongs to another model, deploy the right one"
            )
    try:
        columns = json.loads(props["feature_columns"])
    except (KeyError, ValueError, RecursionError) as exc:  # nested too deep to read: refused
        raise ModelRejected(
            f"model file {path} lacks a JSON list in metadata feature_columns; export it "
            "with the training script's metadata"
        ) from exc
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise ModelRejected(f"model file {path} has a malformed feature_columns list: {columns!r}")
    return tuple(columns)


def _input(
    session: ort.InferenceSession, path: Path, columns: tuple[str, ...]
) -> tuple[str, WindowInput | None]:
    """The input's name, and the window it takes (None: rows), checked against the metadata."""
    inputs = session.get_inputs()
    named = [i for i in inputs if i.name in (INPUT_NAME, WINDOW_INPUT)]
    chosen = named[0] if len(named) == 1 else (inputs[0] if len(inputs) == 1 else None)
    if chosen is None:
        raise ModelRejected(
            f"model file {path} has inputs {[i.name for i in inputs]}; the model contract is one "
            f"float32 input named {INPUT_NAME!r} (or {WINDOW_INPUT!r} for a window model)"
        )
    metadata = session.get_modelmeta().custom_metadata_map
    window = window_of(metadata, path)
    shape = chosen.shape
    check_window_model(window, chosen.name, shape, metadata, columns, path)
    width = len(columns)
    if window is None and (len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width)):
        raise ModelRejected(
            f"model file {path} takes input shape {shape}, but its feature_columns list "
            f"{width} features; export the model with input [N, {width}]"
        )
    return str(chosen.name), window


def _output(session: ort.InferenceSession, path: Path) -> tuple[str, bool]:
    outputs = session.get_outputs()
    for output in outputs:
        if output.name == PROBABILITY_OUTPUT:
            return PROBABILITY_OUTPUT, False
    for output in outputs:
        if len(output.shape) == 2 and output.shape[1] == 2:
            return str(output.name), True
    raise ModelRejected(
        f"model file {path} has outputs {[o.name for o in outputs]}; the model contract needs "
        f"{PROBABILITY_OUTPUT!r} [N] or an [N, 2] probabilities output"
    )


def _decision(session: ort.InferenceSession, path: Path) -> tuple[float, str | None]:
    """The model's decision threshold, and its alarm output if it has one.

    check_model_bytes has already refused an alarm output that is not bool [N].
    """
    try:
        threshold = threshold_of(session.get_modelmeta().custom_metadata_map)
    except BadThreshold as exc:
        raise ModelRejected(f"model file {path} has a bad decision threshold: {exc}") from None
    has_alarm = any(output.name == ALARM_NAME for output in session.get_outputs())
    return threshold, ALARM_NAME if has_alarm else None


def _warm(model: LoadedModel) -> None:
    """Run one inference, so the first real call pays no set-up and a broken graph shows now."""
    try:
        result, _alarms = model.decide(np.zeros((1, *model.input_shape), dtype=np.float32))
    except Exception as exc:
        raise ModelRejected(
            f"model file {model.path} failed its warm-up inference ({type(exc).__name__}: "
            f"{str(exc)[:300]}); deploy a valid version"
        ) from exc
    if result.shape != (1,) or not np.isfinite(result).all():
        raise ModelRejected(
            f"model file {model.path} returned {result!r} for one warm-up row; expected one "
            "finite probability"
        )
