"""The deployed model the new one is compared with: opened leniently (a broken deployed model
never blocks its replacement), and fed only a holdout of its own kind (rows, or windows alike)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from training_tasks.config.window_features import WindowSpec
from training_tasks.files import read_script_output
from training_tasks.protocol.keyring import Keyring, is_sealed
from training_tasks.stages.validate.model_checks import (
    MAX_MODEL_READ_BYTES,
    OnnxModel,
    bind_contract,
    open_session,
    recorded_features,
)
from training_tasks.stages.validate.recorded import WINDOW_KEY

FEATURES_DIFFER = "skipped (features differ)"


@dataclass(frozen=True)
class Deployed:
    """The deployed model and the raw holdout columns its own metadata names, in its order."""

    model: OnnxModel
    features: list[str]
    # Its `window` metadata when it takes windows [N, length, columns]; None: single readings.
    window: dict[str, Any] | None = None


def open_deployed(
    path: Path | None, enabled: bool, *, org_id: str, target: str
) -> tuple[Deployed | None, dict[str, Any]]:
    """The deployed model to compare with, or the reason the comparison is skipped.

    It may be older or newer in style than the model judged, with other derived features: it
    computes those itself and is fed the raw columns it records, not the new model's.
    """
    info: dict[str, Any] = {"deployedModelPath": None if path is None else str(path)}
    if not enabled:
        return None, {**info, "status": "skipped (disabled by notWorseThanDeployed)"}
    if path is None:
        return None, {**info, "status": "skipped (no deployed model)"}
    try:
        stored = read_script_output(Path(path), MAX_MODEL_READ_BYTES, "the deployed model")
        session = open_session(_deployed_onnx(stored, Path(path), org_id))
    except Exception as exc:  # a broken deployed model must not block its replacement
        status = "skipped (deployed model cannot be loaded)"
        return None, {**info, "status": status, "reason": str(exc).strip()}
    info["deployedSha256"] = hashlib.sha256(stored).hexdigest()
    recorded = recorded_features(session)
    if recorded is None or not all(isinstance(name, str) for name in recorded):
        reason = "the deployed model does not record feature_columns as a JSON list of names"
        return None, {**info, "status": FEATURES_DIFFER, "reason": reason}
    if target in recorded:  # fed the labels, it would look perfect
        reason = f"the deployed model takes the target column {target!r} as a feature"
        return None, {**info, "status": FEATURES_DIFFER, "reason": reason}
    window, problem = _window_of(session, len(recorded))
    if problem:
        return None, {**info, "status": FEATURES_DIFFER, "reason": problem}
    shape = None if window is None else (int(window["length"]), len(recorded))
    model, contract = bind_contract(session, len(recorded), shape)
    if model is None:
        status = "skipped (deployed model breaks the model contract)"
        return None, {**info, "status": status, "reason": contract.detail}
    return Deployed(model, list(recorded), window), {**info, "status": "compared"}


def _window_of(session: ort.InferenceSession, columns: int) -> tuple[dict[str, Any] | None, str]:
    """The window a model takes (from its metadata), None for a model of rows; or a problem."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 3:
        return None, ""
    try:
        window = json.loads(session.get_modelmeta().custom_metadata_map[WINDOW_KEY])
    except (KeyError, ValueError, RecursionError):
        window = None
    if not isinstance(window, dict) or not _is_length(window.get("length")):
        return None, "the deployed model takes windows but does not record its window spec"
    if window.get("columns") is not None and len(window["columns"]) != columns:
        return None, "the deployed model's window columns differ from its feature_columns"
    return window, ""


def _is_length(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def unlike(spec: WindowSpec | None, deployed: Deployed) -> str:
    """Why the deployed model cannot be fed this run's holdout, or "" when it can."""
    theirs = deployed.window
    if spec is None and theirs is None:
        return ""
    ours = "single readings" if spec is None else f"windows of {_shown(spec.to_wire())}"
    if theirs is None:
        return f"the deployed model takes single readings, this run's holdout holds {ours}"
    if spec is not None and (
        theirs.get("intervalSeconds") == spec.interval_s
        and theirs.get("length") == spec.length
        and deployed.features == list(spec.columns)
    ):
        return ""
    shown = _shown({**theirs, "columns": deployed.features})
    return f"the deployed model takes windows of {shown}, this run's holdout holds {ours}"


def _shown(window: dict[str, Any]) -> str:
    return f"{window.get('length')} x {window.get('interval')} of {list(window['columns'])}"


def _deployed_onnx(stored: bytes, path: Path, org_id: str) -> bytes:
    """The ONNX bytes of a deployed copy `models/<org>/deployed_<version>/model.onnx`."""
    if not is_sealed(stored):
        return stored
    version = path.parent.name.removeprefix("deployed_")
    return Keyring.from_env().open_model(stored, org_id, version)
