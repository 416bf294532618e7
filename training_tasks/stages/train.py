"""The train stage: run the training script in the sandbox and check what it left behind."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_tasks.config.derived import compile_features
from training_tasks.config.settings import BUNDLED_SCRIPT, read_fork_server
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import Cancelled, TrainingError, TrainingKilled
from training_tasks.files import (
    UnsafeFile,
    open_regular,
    read_script_output,
    remove_entry,
    write_bytes_atomic,
    write_json_atomic,
)
from training_tasks.sandbox.runner import ResourceLimits, SandboxResult, allowed_env, run_sandboxed

log = logging.getLogger(__name__)

CONFIG_FILE = "training_config.json"
MODEL_FILE = "model.onnx"
NATIVE_MODEL_FILE = "model.txt"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "auc")
MAX_METRICS_BYTES = 1 << 20
# A model file is read whole by the worker; without a file size limit on the script, this caps it.
DEFAULT_MAX_MODEL_BYTES = 1 << 30


@dataclass(frozen=True)
class TrainResult:
    """What a successful training produced and what it cost; round-trips through JSON."""

    model_path: Path
    native_model_path: Path | None
    metrics: Mapping[str, Any]
    elapsed_s: float
    cpu_s: float
    peak_rss_mb: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (paths as strings) for Celery messages."""
        return {
            "modelPath": str(self.model_path),
            "nativeModelPath": str(self.native_model_path) if self.native_model_path else None,
            "metrics": dict(self.metrics),
            "elapsedS": self.elapsed_s,
            "cpuS": self.cpu_s,
            "peakRssMb": self.peak_rss_mb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        """Rebuild a result from `as_dict()` output."""
        native = data.get("nativeModelPath")
        return cls(
            model_path=Path(data["modelPath"]),
            native_model_path=Path(native) if native else None,
            metrics=dict(data["metrics"]),
            elapsed_s=float(data["elapsedS"]),
            cpu_s=float(data["cpuS"]),
            peak_rss_mb=float(data["peakRssMb"]),
        )


def script_config(
    config: TrainingConfig, *, version: str, train_path: Path, holdout_path: Path, output_dir: Path
) -> dict[str, Any]:
    """The JSON config the training script receives (camelCase, absolute paths).

    `derivedFeatures` arrives parsed ([{name, expression, ast}], see `config/derived.py`), so a
    script computes the features without an expression parser of its own; for a window model
    they are expressions over the window statistics' names (`vibration__slope`).
    """
    windows = config.windows
    return {
        **config.to_wire(),
        "derivedFeatures": compile_features(config.derived_features, config.tree_features),
        "windows": windows.to_wire() if windows else None,
        "purgeGapSeconds": config.purge_gap_s,
        "labelHorizonSeconds": config.label_horizon_s,
        "version": version,
        "outputPath": str(output_dir.resolve()),
        "trainDataPath": str(train_path.resolve()),
        "holdoutDataPath": str(holdout_path.resolve()),
    }


def train(
    config: TrainingConfig,
    *,
    version: str,
    train_path: Path,
    holdout_path: Path,
    output_dir: Path,
    script: Path,
    python: str,
    timeout_s: float,
    limits: ResourceLimits,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
    fork_server: bool | None = None,
) -> TrainResult:
    """Run `<python> <script> <config>` sandboxed; raise TrainingError unless it kept the contract.

    The bundled script is forked from a fork server that imported its libraries (about 1 s less
    per run) unless `fork_server` is False (None: TRAINING_FORK_SERVER, on by default). An
    organization's own script always starts a fresh interpreter: its imports are its own.
    """
    failure = _Failure(config.organization_id, version, output_dir / LOG_FILE)
    if not script.is_file():
        raise failure.no_script(script)
    config_path = _prepare(config, version, train_path, holdout_path, output_dir)
    lines = _ProgressLines(progress)
    result = run_sandboxed(
        [python, str(script.resolve()), str(config_path)],
        cwd=output_dir,
        env=allowed_env(),
        timeout_s=timeout_s,
        limits=limits,
        on_line=lines,
        log_path=output_dir / LOG_FILE,
        cancel=cancel,
        fork_server=_forks(script, fork_server),
    )
    if not result.ok:
        if result.cancelled:
            raise Cancelled(str(failure.ran(result, lines.error)))
        error = failure.ran(result, lines.error)
        if _killed_from_outside(result):
            raise TrainingKilled(str(error))  # worth another attempt
        raise error
    max_bytes = max_model_bytes(limits)
    model_path = output_dir / MODEL_FILE
    if not _checked_output(model_path, max_bytes, failure):
        raise failure.broke_contract(f"it wrote no {MODEL_FILE} (or an empty one) in {output_dir}")
    native = output_dir / NATIVE_MODEL_FILE
    return TrainResult(
        model_path=model_path,
        native_model_path=native if _checked_output(native, max_bytes, failure) else None,
        metrics=_read_metrics(output_dir / METRICS_FILE, failure),
        elapsed_s=result.elapsed_s,
        cpu_s=result.cpu_s,
        peak_rss_mb=result.peak_rss_mb,
    )


def _forks(script: Path, fork_server: bool | None) -> bool:
    """Whether this run may fork from a fork server: only the bundled script, if it is on."""
    if fork_server is None:
        fork_server = read_fork_server(os.environ)
    return fork_server and script.resolve() == BUNDLED_SCRIPT.resolve()


def max_model_bytes(limits: ResourceLimits) -> int:
    """The largest model file the worker reads from a script run under `limits`."""
    if limits.file_size_mb is None:
        return DEFAULT_MAX_MODEL_BYTES
    return limits.file_size_mb * (1 << 20)


def store_model(
    source: Path,
    destination: Path,
    *,
    max_bytes: int,
    seal: Callable[[bytes], bytes] | None = None,
    where: str,
) -> bytes:
    """Copy the script's model into the store (sealed by `seal`), then remove it from the script's
    folder; returns the bytes as stored. Only a regular file is taken, never what a link names."""
    try:
        data = read_script_output(source, max_bytes, MODEL_FILE)
    except FileNotFoundError:
        raise TrainingError(f"{where}: {source} is gone; train again") from None
    except UnsafeFile as exc:
        raise TrainingError(f"{where}: {exc}; the script must write {MODEL_FILE} itself") from None
    stored = seal(data) if seal is not None else data
    write_bytes_atomic(destination, stored)
    source.unlink(missing_ok=True)  # a moved model: no second, possibly plain, copy stays behind
    return stored


def _checked_output(path: Path, max_bytes: int, failure: _Failure) -> bool:
    """Whether the script left a non-empty `path`; a link, FIFO, device or oversize file fails."""
    try:
        fd = open_regular(path, max_bytes, path.name)
    except FileNotFoundError:
        return False
    except UnsafeFile as exc:
        raise failure.broke_contract(str(exc)) from None
    try:
        return os.fstat(fd).st_size > 0
    finally:
        os.close(fd)


def _killed_from_outside(result: SandboxResult) -> bool:
    """A signal the script did not earn by its own limits: the OOM killer, a crash, a kill."""
    return (
        result.signal is not None
        and not result.timed_out
        and result.signal not in (signal.SIGXCPU, signal.SIGXFSZ)
    )


def _prepare(
    config: TrainingConfig, version: str, train_path: Path, holdout_path: Path, output_dir: Path
) -> Path:
    """Write training_config.json into a clean output folder; returns its absolute path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # A retried run reuses the folder: stale outputs must not pass for this run's results.
    for name in (MODEL_FILE, NATIVE_MODEL_FILE, METRICS_FILE, CONFIG_FILE):
        remove_entry(output_dir / name)  # a link, FIFO or folder under the name goes too
    wire = script_config(
        config,
        version=version,
        train_path=train_path,
        holdout_path=holdout_path,
        output_dir=output_dir,
    )
    # Never resolve the file itself: a link planted under its name must not move the write.
    config_path = output_dir.resolve() / CONFIG_FILE
    # A new temporary name each time, renamed over whatever the last attempt left at the name.
    write_json_atomic(config_path, wire)
    return config_path


class _ProgressLines:
    """Parses the script's JSON lines: forwards iterations, remembers the last error."""

    def __init__(self, progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.progress = progress
        self.error: str | None = None

    def __call__(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # the contract allows other output; it still lands in train.log
        if not isinstance(event, dict):
            return
        if event.get("event") == "error":
            self.error = str(event.get("message", ""))
        elif event.get("event") == "iteration" and self.progress is not None:
            update = {
                "stage": "train",
                "iteration": event.get("iteration"),
                "total": event.get("total"),
            }
            try:
                self.progress(update)
            except Exception:
                # Reporting progress is best effort; it must not kill a good training.
                log.warning("progress callback failed for %s", update, exc_info=True)


@dataclass(frozen=True)
class _Failure:
    """Builds TrainingError messages that name the run, the cause and the log."""

    organization_id: str
    version: str
    log_path: Path

    def ran(self, result: SandboxResult, script_error: str | None) -> TrainingError:
        detail = result.reason()
        if script_error and script_error not in detail:
            detail += f" (the script said: {script_error})"
        hint = "see the log"
        if result.timed_out:
            hint = "raise TRAINING_TIMEOUT_S, shorten dataRange or lower numIterations"
        elif result.cancelled:
            hint = "submit the training again if it is still wanted"
        elif "memory" in detail:
            hint = "raise the memory limit or shorten dataRange"
        return self._error(f"the training script {detail}", hint)

    def no_script(self, script: Path) -> TrainingError:
        return self._error(
            f"the training script {script} does not exist",
            "install it or fix the script in the organization's mlModelConfig",
        )

    def broke_contract(self, problem: str) -> TrainingError:
        return self._error(
            f"the training script exited 0 but {problem}",
            "check that the script writes its outputs into outputPath",
        )

    def _error(self, what: str, hint: str) -> TrainingError:
        return TrainingError(
            f"training of organization {self.organization_id} version {self.version} failed: "
            f"{what}; {hint} (log: {self.log_path})"
        )


def _read_metrics(path: Path, failure: _Failure) -> dict[str, Any]:
    try:
        metrics = json.loads(read_script_output(path, MAX_METRICS_BYTES, METRICS_FILE))
    except FileNotFoundError:
        raise failure.broke_contract(f"it wrote no {METRICS_FILE}") from None
    except UnsafeFile as exc:
        raise failure.broke_contract(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise failure.broke_contract(f"{METRICS_FILE} is not valid JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise failure.broke_contract(f"{METRICS_FILE} is not a JSON object")
    bad = [key for key in METRIC_KEYS if not _is_metric(metrics.get(key, "missing"))]
    if bad:
        raise failure.broke_contract(
            f"{METRICS_FILE} lacks a number for {', '.join(bad)} (needs {', '.join(METRIC_KEYS)})"
        )
    return metrics


def _is_metric(value: object) -> bool:
    """A metric is a finite number, or null where it is undefined (AUC with one class)."""
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
