"""The validate stage: judge a trained ONNX model on the holdout before anything is deployed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training_tasks.config.org import THRESHOLD_DEFAULTS
from training_tasks.files import UnsafeFile, read_script_output
from training_tasks.protocol.decision import DEFAULT_THRESHOLD
from training_tasks.protocol.keyring import Keyring, SealedDataError
from training_tasks.protocol.onnx_checks import UnsafeModel, check_model_bytes
from training_tasks.stages.validate.for_report import report_inputs
from training_tasks.stages.validate.holdout import (
    Holdout,
    Scored,
    Scorer,
    open_holdout,
    sample_rows,
    score_and_check,
)
from training_tasks.stages.validate.metrics import GATED_METRICS, Judged, judge_scores, no_scores
from training_tasks.stages.validate.model_checks import (
    BYTES_PER_MB,
    MAX_MODEL_READ_BYTES,
    Check,
    Deployed,
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
from training_tasks.stages.validate.recorded import DerivedFeature, ModelDecision, RunRecord
from training_tasks.stages.validate.report import ValidationReport, failures_of
from training_tasks.stages.validate.verdicts import (
    compare_with_deployed,
    decision_check,
    parity_with_native,
    positives_check,
    threshold_check,
)

# A failure of one of these leaves nothing to measure, so the checks after them are not run.
PREREQUISITES = ("load", "contract", "holdout", "scores")
AFTER_LOAD = ("contract", "metadata", "memory")
SIZE_HINT = " (use fewer trees or leaves, or raise maxModelSizeMb)"


@dataclass
class _Loaded:
    """What reading and loading the model under validation produced."""

    checks: list[Check]
    model: OnnxModel | None = None
    decision: ModelDecision | None = None
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
    derived_features: Sequence[DerivedFeature] | None = None,
    recorded_thresholds: Mapping[str, object] | None = None,
    train_path: Path | None = None,
) -> ValidationReport:
    """Run every check on the model and report; a bad model is a verdict here, not an error.

    With `holdout_sha256` (recorded by extract) a holdout changed since is refused unscored.
    `derived_features` ([{name, expression, ast}]) and `recorded_thresholds` (where the run
    recorded its decision threshold: the value, or None where one is missing) are what the run
    recorded; the model's metadata must repeat them. Without a run (None) the model's own
    metadata is taken. `train_path` (default: train.parquet beside the holdout) is summarized
    in the report, for drift against the deployed version.
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
            run=RunRecord(derived_features, recorded_thresholds or {}),
            native_model_path=native_model_path,
            deployed=(deployed_model_path, target_column),
            train_path=train_path,
        )
    finally:
        if holdout is not None:
            holdout.close()
    return ValidationReport(
        organization_id=org_id,
        version=version,
        passed=all(check.passed for check in checks),
        failures=failures_of(checks),
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
    run: RunRecord,
    native_model_path: Path | None,
    deployed: tuple[Path | None, str],
    train_path: Path | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """Every check, in order, and the measurements the report carries besides them."""
    opened, holdout_problem = holdout
    sample = sample_rows(opened, len(features))
    loaded = _load_model(model_path, org_id, version, features, sample, limits, run)
    latency = measure_latency(loaded.model, sample) if loaded.model else {}
    checks = [*loaded.checks, _latency_check(latency, limits, _blocker(loaded.checks))]
    parity_limit = float(limits["maxParityDiff"])
    native, parity_check, importance = open_native(
        native_model_path, features, _derived(run, loaded.decision), parity_limit
    )
    enabled = bool(limits["notWorseThanDeployed"])
    other, comparison = open_deployed(deployed[0], enabled, org_id=org_id, target=deployed[1])
    opened, other, comparison = _with_deployed_columns(opened, other, comparison)
    predictors = _predictors(loaded.model, native, other, opened, features)
    scored, scoring_checks = score_and_check(opened, holdout_problem, predictors, _blocker(checks))
    checks += scoring_checks
    holdout_ok = next(check.passed for check in scoring_checks if check.name == "holdout")
    checks.append(positives_check(scored if holdout_ok else None, limits))
    threshold = loaded.decision.threshold if loaded.decision else None
    verdicts, found = _verdicts(scored, checks, threshold, limits, (parity_check, comparison))
    paths = (opened.path if opened is not None else Path(), train_path)
    evidence = report_inputs(scored, checks, found, importance, paths, (features, deployed[1]))
    return checks + verdicts, {
        **found,
        "evidence": evidence,
        "latency": latency,
        "memory": loaded.memory,
        "model_sha256": loaded.sha256,
        "model_size_bytes": loaded.size_bytes,
        "rows": 0 if scored is None else scored.rows,
    }


def _verdicts(
    scored: Scored | None,
    checks: list[Check],
    threshold: float | None,
    limits: Mapping[str, Any],
    pending: tuple[Check | None, dict[str, Any]],
) -> tuple[list[Check], dict[str, Any]]:
    """The checks of the scores (after `checks`), and the metrics and findings behind them."""
    blocker = _blocker(checks)
    judged = _judge_scores(scored, threshold, blocker)
    gates = [threshold_check(name, judged, limits, blocker) for name in GATED_METRICS]
    parity_limit, metrics = float(limits["maxParityDiff"]), judged.metrics
    parity_check, parity = parity_with_native(pending[0], scored, parity_limit, blocker)
    compare_check, comparison = compare_with_deployed(pending[1], scored, metrics, limits, blocker)
    verdicts = [
        decision_check(scored, threshold, blocker),
        *(check for check, _ in gates),
        parity_check,
        compare_check,
    ]
    return verdicts, {
        "metrics": metrics,
        "parity": parity,
        "comparison": comparison,
        "decision_threshold": metrics["decisionThreshold"],
        "counts": None if judged.counts is None else judged.counts.as_dict(),
        "intervals": judged.intervals,
        "warnings": [note for _, note in gates if note is not None],
    }


def _derived(run: RunRecord, decision: ModelDecision | None) -> list[DerivedFeature]:
    """The derived features the native model is fed: the run's, else the model's own."""
    if run.derived_features is not None:
        return list(run.derived_features)
    return decision.derived_features if decision is not None else []


def _judge_scores(scored: Scored | None, threshold: float | None, blocker: str | None) -> Judged:
    """The model's metrics at its threshold (0.5 where its metadata's cannot be read)."""
    if scored is None or blocker is not None:
        return no_scores(threshold)
    at = DEFAULT_THRESHOLD if threshold is None else threshold
    return judge_scores(scored.labels, scored.scores["model"], at)


def _with_deployed_columns(
    holdout: Holdout | None, deployed: Deployed | None, comparison: dict[str, Any]
) -> tuple[Holdout | None, Deployed | None, dict[str, Any]]:
    """The holdout also reading the raw columns the deployed model names, if it has them."""
    if holdout is None or deployed is None:
        return holdout, deployed, comparison
    comparison = {**comparison, "deployedFeatures": deployed.features}
    extended, missing = holdout.with_columns(deployed.features)
    if missing:
        reason = f"the holdout has no numeric columns {missing}, which the deployed model takes"
        return (
            holdout,
            None,
            {**comparison, "status": "skipped (features differ)", "reason": reason},
        )
    return extended, deployed, comparison


def _predictors(
    model: OnnxModel | None,
    native: Predictor | None,
    deployed: Deployed | None,
    holdout: Holdout | None,
    features: list[str],
) -> dict[str, Scorer]:
    """Who scores the holdout, each fed its own columns; without a model the holdout is still
    read, to check its labels."""
    if model is None:
        return {}
    columns = holdout.features if holdout is not None else features
    own = _feeder(columns, features)
    found: dict[str, Scorer] = {"model": lambda rows: model.predict_with_alarm(own(rows))}
    if native is not None:
        found["native"] = lambda rows: native(own(rows))
    if deployed is not None:
        theirs, predict = _feeder(columns, deployed.features), deployed.model.predict
        found["deployed"] = lambda rows: predict(theirs(rows))
    return found


def _feeder(columns: list[str], wanted: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Picks the `wanted` columns out of a holdout chunk of `columns`, as a C-ordered matrix."""
    if columns == wanted:
        return lambda rows: rows
    index = np.array([columns.index(name) for name in wanted], dtype=np.intp)
    return lambda rows: np.ascontiguousarray(rows[:, index])


def _load_model(
    path: Path,
    org_id: str,
    version: str,
    features: list[str],
    sample: np.ndarray,
    limits: Mapping[str, Any],
    run: RunRecord,
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
    metadata, loaded.decision = metadata_check(session, org_id, version, features, run)
    loaded.checks = [
        Check("load", True, None, None, f"loaded by onnxruntime {ort.__version__} on the CPU"),
        size,
        contract,
        metadata,
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
