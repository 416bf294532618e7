"""The validate stage: judge a trained ONNX model on the holdout before anything is deployed."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training_tasks.config.org import THRESHOLD_DEFAULTS
from training_tasks.errors import ValidationRejected
from training_tasks.files import UnsafeFile, fsync_dir, read_script_output, write_json_atomic
from training_tasks.protocol.keyring import Keyring, SealedDataError
from training_tasks.protocol.onnx_checks import UnsafeModel, check_model_bytes
from training_tasks.stages.validate.holdout import (
    Holdout,
    compare_with_deployed,
    holdout_metrics,
    no_metrics,
    open_holdout,
    parity_with_native,
    sample_rows,
    score_and_check,
    threshold_check,
)
from training_tasks.stages.validate.model_checks import (
    BYTES_PER_MB,
    MAX_MODEL_READ_BYTES,
    Check,
    OnnxModel,
    Predictor,
    at_most,
    bind_contract,
    measure_latency,
    metadata_check,
    not_run,
    open_deployed,
    open_native,
    open_session,
    prime_runtime,
    release_free_heap,
    rss_bytes,
    warm_up,
)

THRESHOLD_METRICS = ("accuracy", "precision", "recall")
# A failure of one of these leaves nothing to measure, so the checks after them are not run.
PREREQUISITES = ("load", "contract", "holdout", "scores")
NEXT_STEP = (
    "The deployed model keeps serving; adjust the data range, features or thresholds "
    "and train again."
)
AFTER_LOAD = ("contract", "metadata", "memory")
SIZE_HINT = " (use fewer trees or leaves, or raise maxModelSizeMb)"


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on one model version, with every check and measurement behind it."""

    organization_id: str
    version: str
    passed: bool
    failures: list[str]
    checks: list[Check]
    metrics: dict[str, float | None]
    script_metrics: dict[str, Any] | None
    latency: dict[str, float]
    memory: dict[str, float]
    parity: dict[str, Any]
    comparison: dict[str, Any]
    model_sha256: str | None
    model_size_bytes: int | None
    rows: int
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able camelCase data, for validation.json and the database."""
        doc = {
            "organizationId": self.organization_id,
            "version": self.version,
            "passed": self.passed,
            "failures": self.failures,
            "checks": [check.as_dict() for check in self.checks],
            "metrics": self.metrics,
            "scriptMetrics": self.script_metrics,
            "latency": self.latency,
            "memory": self.memory,
            "parity": self.parity,
            "comparison": self.comparison,
            "modelSha256": self.model_sha256,
            "modelSizeBytes": self.model_size_bytes,
            "rows": self.rows,
            "durationMs": self.duration_ms,
        }
        return dict(_jsonable(doc))

    def write(self, path: Path) -> Path:
        """Write validation.json atomically: readers see the old file or the whole new one."""
        path = Path(path)
        write_json_atomic(path, self.as_dict())
        fsync_dir(path.parent)
        return path

    def raise_if_rejected(self) -> None:
        """Raise ValidationRejected listing every failed check, unless the model passed."""
        if self.passed:
            return
        raise ValidationRejected(
            f"Organization {self.organization_id}: model version {self.version} was rejected by "
            f"validation and not deployed: {'; '.join(self.failures)}. {NEXT_STEP}",
            list(self.failures),
        )


@dataclass
class _Loaded:
    """What reading and loading the model under validation produced."""

    checks: list[Check]
    model: OnnxModel | None = None
    memory: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    size_bytes: int | None = None


def validate(
    *,
    org_id: str,
    version: str,
    model_path: Path,
    holdout_path: Path,
    feature_columns: Sequence[str],
    target_column: str,
    thresholds: Mapping[str, Any],
    native_model_path: Path | None = None,
    deployed_model_path: Path | None = None,
    script_metrics: Mapping[str, Any] | None = None,
    holdout_sha256: str | None = None,
) -> ValidationReport:
    """Run every check on the model and report; a bad model is a verdict here, not an error.

    With `holdout_sha256` (recorded by extract) a holdout changed since is refused unscored.
    """
    started_ns = time.perf_counter_ns()
    features = list(feature_columns)
    holdout, problem = open_holdout(Path(holdout_path), features, target_column, holdout_sha256)
    try:
        checks, found = _judge(
            org_id=org_id,
            version=version,
            model_path=Path(model_path),
            holdout=(holdout, problem),
            features=features,
            limits={**THRESHOLD_DEFAULTS, **thresholds},
            native_model_path=native_model_path,
            deployed_model_path=deployed_model_path,
        )
    finally:
        if holdout is not None:
            holdout.close()
    return ValidationReport(
        organization_id=org_id,
        version=version,
        passed=all(check.passed for check in checks),
        failures=_failures(checks),
        checks=checks,
        script_metrics=None if script_metrics is None else dict(script_metrics),
        duration_ms=(time.perf_counter_ns() - started_ns) / 1e6,
        **found,
    )


def _judge(
    *,
    org_id: str,
    version: str,
    model_path: Path,
    holdout: tuple[Holdout | None, str],
    features: list[str],
    limits: Mapping[str, Any],
    native_model_path: Path | None,
    deployed_model_path: Path | None,
) -> tuple[list[Check], dict[str, Any]]:
    """Every check, in order, and the measurements the report carries besides them."""
    opened, holdout_problem = holdout
    sample = sample_rows(opened, len(features))
    loaded = _load_model(model_path, org_id, version, features, sample, limits)
    latency = measure_latency(loaded.model, sample) if loaded.model else {}
    checks = [*loaded.checks, _latency_check(latency, limits, _blocker(loaded.checks))]
    parity_limit = float(limits["maxParityDiff"])
    native, parity_check = open_native(native_model_path, len(features), parity_limit)
    enabled = bool(limits["notWorseThanDeployed"])
    deployed, comparison = open_deployed(deployed_model_path, features, enabled, org_id=org_id)
    predictors = _predictors(loaded.model, native, deployed)
    scored, scoring_checks = score_and_check(opened, holdout_problem, predictors, _blocker(checks))
    checks += scoring_checks
    blocker = _blocker(checks)
    metrics = holdout_metrics(scored) if scored is not None and blocker is None else no_metrics()
    checks += [threshold_check(name, metrics[name], limits, blocker) for name in THRESHOLD_METRICS]
    parity_check, parity = parity_with_native(parity_check, scored, parity_limit, blocker)
    compare_check, comparison = compare_with_deployed(comparison, scored, metrics, limits, blocker)
    checks += [parity_check, compare_check]
    return checks, {
        "metrics": metrics,
        "latency": latency,
        "memory": loaded.memory,
        "parity": parity,
        "comparison": comparison,
        "model_sha256": loaded.sha256,
        "model_size_bytes": loaded.size_bytes,
        "rows": 0 if scored is None else scored.rows,
    }


def _predictors(
    model: OnnxModel | None, native: Predictor | None, deployed: OnnxModel | None
) -> dict[str, Predictor]:
    """Who scores the holdout; without a model it is still read, to check its labels."""
    if model is None:
        return {}
    found = {"model": model.predict, "native": native}
    found["deployed"] = deployed.predict if deployed is not None else None
    return {name: predict for name, predict in found.items() if predict is not None}


def _load_model(
    path: Path,
    org_id: str,
    version: str,
    features: list[str],
    sample: np.ndarray,
    limits: Mapping[str, Any],
) -> _Loaded:
    """Read, hash and load the model; check size, contract and metadata; measure its memory."""
    blocked = [not_run(name, "load") for name in ("modelSize", *AFTER_LOAD)]
    try:
        # Hash and load the same bytes, so the recorded sha256 is of exactly what was validated.
        model_bytes = read_script_output(path, MAX_MODEL_READ_BYTES, "the model file")
    except UnsafeFile as exc:
        return _Loaded([Check("load", False, None, None, str(exc)), *blocked])
    except OSError as exc:
        detail = f"the model file {path} cannot be read ({exc.strerror}); the export must write it"
        return _Loaded([Check("load", False, None, None, detail), *blocked])
    size_mb, size_limit_mb = len(model_bytes) / BYTES_PER_MB, float(limits["maxModelSizeMb"])
    size = at_most("modelSize", "the model file", size_mb, size_limit_mb, "MB", SIZE_HINT)
    loaded = _Loaded(
        [], sha256=hashlib.sha256(model_bytes).hexdigest(), size_bytes=len(model_bytes)
    )
    blocked = [not_run(name, "load") for name in AFTER_LOAD]
    onnx_bytes, problem = _open_file(model_bytes, path, org_id, version)
    if onnx_bytes is not None:
        try:  # no external data, no custom operators, the contract's shape: before onnxruntime
            check_model_bytes(onnx_bytes, label=f"organization {org_id} version {version} ({path})")
        except UnsafeModel as exc:
            onnx_bytes, problem = None, str(exc)
    if onnx_bytes is None:
        loaded.checks = [Check("load", False, None, None, problem), size, *blocked]
        return loaded
    prime_runtime()
    release_free_heap()
    rss_before = rss_bytes()
    try:
        session = open_session(onnx_bytes)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        detail = f"onnxruntime cannot load the model {path}: {str(exc).strip()}"
        loaded.checks = [Check("load", False, None, None, detail), size, *blocked]
        return loaded
    loaded.model, contract = bind_contract(session, len(features))
    if loaded.model is not None:
        loaded.model, contract = _warm_up(loaded.model, contract, sample)
    loaded.memory = _memory(rss_before, rss_bytes())
    memory_mb, memory_limit_mb = loaded.memory["sessionMb"], float(limits["maxMemoryMb"])
    loaded.checks = [
        Check("load", True, None, None, f"loaded by onnxruntime {ort.__version__} on the CPU"),
        size,
        contract,
        metadata_check(session, org_id, version, features),
        at_most("memory", "the ONNX session's memory", memory_mb, memory_limit_mb, "MB"),
    ]
    return loaded


def _open_file(data: bytes, path: Path, org_id: str, version: str) -> tuple[bytes | None, str]:
    """The ONNX bytes of a model file (a sealed one is opened in memory), or why it cannot be."""
    # The sha256 and size of the report stay those of the file as stored, as recorded at training.
    try:
        return Keyring.from_env().open_model(data, org_id, version), ""
    except SealedDataError as exc:
        return None, f"the model file {path} cannot be opened: {exc}"


def _warm_up(
    model: OnnxModel, contract: Check, sample: np.ndarray
) -> tuple[OnnxModel | None, Check]:
    try:
        warm_up(model, sample)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        detail = f"the model fails on a float32 [N, {sample.shape[1]}] input: {str(exc).strip()}"
        return None, Check("contract", False, None, None, detail)
    return model, contract


def _memory(rss_before: int, rss_after: int) -> dict[str, float]:
    return {
        "sessionMb": max(0, rss_after - rss_before) / BYTES_PER_MB,
        "rssBeforeMb": rss_before / BYTES_PER_MB,
        "rssAfterMb": rss_after / BYTES_PER_MB,
    }


def _latency_check(
    latency: Mapping[str, float], limits: Mapping[str, Any], blocker: str | None
) -> Check:
    if blocker is not None or not latency:
        return not_run("latency", blocker or "contract")
    limit_ms = float(limits["maxLatencyMs"])
    return at_most("latency", "single-row inference p99", latency["singleRowP99Ms"], limit_ms, "ms")


def _blocker(checks: Sequence[Check]) -> str | None:
    """The first failed check that leaves nothing to measure."""
    failed = {check.name for check in checks if not check.passed and check.blocked_by is None}
    return next((name for name in PREREQUISITES if name in failed), None)


def _failures(checks: Sequence[Check]) -> list[str]:
    """One sentence per failed check; the checks that could not run are summed up per cause."""
    failures = [check.detail for check in checks if not check.passed and check.blocked_by is None]
    blocked: dict[str, list[str]] = {}
    for check in checks:
        if check.blocked_by is not None:
            blocked.setdefault(check.blocked_by, []).append(check.name)
    for blocker, names in blocked.items():
        sentence = f"{', '.join(names)} could not be checked because the {blocker} check failed"
        failures.append(sentence)
    return failures


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars become Python numbers, NaN and infinity become null."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return str(value)
