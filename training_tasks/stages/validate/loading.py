"""Reading and loading the model under validation: its bytes (hashed as stored, opened if sealed),
the ONNX checks before onnxruntime, the session, its contract, metadata and memory."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training_tasks.config.window_features import WindowSpec
from training_tasks.files import UnsafeFile, read_script_output
from training_tasks.protocol.keyring import Keyring, SealedDataError
from training_tasks.protocol.onnx_checks import UnsafeModel, check_model_bytes
from training_tasks.stages.validate.model_checks import (
    BYTES_PER_MB,
    MAX_MODEL_READ_BYTES,
    Check,
    OnnxModel,
    at_most,
    bind_contract,
    metadata_check,
    not_run,
    open_session,
    prime_runtime,
    release_free_heap,
    rss_bytes,
    warm_up,
)
from training_tasks.stages.validate.recorded import ModelDecision, RunRecord

AFTER_LOAD = ("contract", "metadata", "memory")
SIZE_HINT = " (use fewer trees or leaves, or raise maxModelSizeMb)"


@dataclass
class Loaded:
    """What reading and loading the model under validation produced."""

    checks: list[Check]
    model: OnnxModel | None = None
    decision: ModelDecision | None = None
    memory: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    size_bytes: int | None = None
    onnx_bytes: bytes | None = field(default=None, repr=False)  # what onnxruntime loaded


@dataclass(frozen=True)
class Expected:
    """What the run says the model takes: its raw columns, and the window spec of a window model."""

    org_id: str
    version: str
    features: list[str]
    run: RunRecord
    window: WindowSpec | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input: [features], or [length, columns] for a window model."""
        if self.window is None:
            return (len(self.features),)
        return (self.window.length, len(self.window.columns))


def load_model(
    path: Path, expected: Expected, sample: np.ndarray, limits: Mapping[str, Any]
) -> Loaded:
    """Read, hash and load the model; check size, contract and metadata; measure its memory."""
    blocked = [not_run(name, "load") for name in ("modelSize", *AFTER_LOAD)]
    try:
        # Hash and load the same bytes, so the recorded sha256 is of exactly what was validated.
        model_bytes = read_script_output(path, MAX_MODEL_READ_BYTES, "the model file")
    except UnsafeFile as exc:
        return Loaded([Check("load", False, None, None, str(exc)), *blocked])
    except OSError as exc:
        detail = f"the model file {path} cannot be read ({exc.strerror}); the export must write it"
        return Loaded([Check("load", False, None, None, detail), *blocked])
    size_mb, size_limit_mb = len(model_bytes) / BYTES_PER_MB, float(limits["maxModelSizeMb"])
    size = at_most("modelSize", "the model file", size_mb, size_limit_mb, "MB", SIZE_HINT)
    loaded = Loaded([], sha256=hashlib.sha256(model_bytes).hexdigest(), size_bytes=len(model_bytes))
    blocked = [not_run(name, "load") for name in AFTER_LOAD]
    onnx_bytes, problem = _open_file(model_bytes, path, expected.org_id, expected.version)
    if onnx_bytes is not None:
        try:  # no external data, no custom operators, the contract's shape: before onnxruntime
            label = f"organization {expected.org_id} version {expected.version} ({path})"
            check_model_bytes(onnx_bytes, label=label)
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
    loaded.onnx_bytes = onnx_bytes
    _bind(loaded, session, expected, sample)
    loaded.memory = _memory(rss_before, rss_bytes())
    memory_mb, memory_limit_mb = loaded.memory["sessionMb"], float(limits["maxMemoryMb"])
    metadata, loaded.decision = metadata_check(
        session, expected.org_id, expected.version, expected.features, expected.run, expected.window
    )
    loaded.checks = [
        Check("load", True, None, None, f"loaded by onnxruntime {ort.__version__} on the CPU"),
        size,
        *loaded.checks,
        metadata,
        at_most("memory", "the ONNX session's memory", memory_mb, memory_limit_mb, "MB"),
    ]
    return loaded


def _bind(
    loaded: Loaded, session: ort.InferenceSession, expected: Expected, sample: np.ndarray
) -> None:
    """Bind the contract and warm the model up; `loaded.checks` gets the contract check."""
    window = None if expected.window is None else (expected.shape[0], expected.shape[1])
    model, contract = bind_contract(session, len(expected.features), window)
    if model is not None:
        try:
            warm_up(model, sample)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            shape = ", ".join(map(str, expected.shape))
            detail = f"the model fails on a float32 [N, {shape}] input: {str(exc).strip()}"
            model, contract = None, Check("contract", False, None, None, detail)
    loaded.model, loaded.checks = model, [contract]


def _open_file(data: bytes, path: Path, org_id: str, version: str) -> tuple[bytes | None, str]:
    """The ONNX bytes of a model file (a sealed one is opened in memory), or why it cannot be."""
    # The sha256 and size of the report stay those of the file as stored, as recorded at training.
    try:
        return Keyring.from_env().open_model(data, org_id, version), ""
    except SealedDataError as exc:
        return None, f"the model file {path} cannot be opened: {exc}"


def _memory(rss_before: int, rss_after: int) -> dict[str, float]:
    return {
        "sessionMb": max(0, rss_after - rss_before) / BYTES_PER_MB,
        "rssBeforeMb": rss_before / BYTES_PER_MB,
        "rssAfterMb": rss_after / BYTES_PER_MB,
    }
