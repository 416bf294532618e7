"""Benchmark: what computing the window statistics inside the model costs one prediction.

Run with `python -m tests.bench bench_window_inference [--quick]`. A window model (windows of 36
buckets x 2 columns, the 7 statistics, 100 trees of up to 31 leaves) against the same trees
exported as a model on single rows fed the 14 statistics precomputed, both through the model
cache's LoadedModel and through a bare onnxruntime session (one intra-op thread, as the cache
runs them), single-window / single-row calls interleaved in the same run:

- `*_p50_us`, `*_p99_us`: per call, in microseconds;
- `window_ratio_p50` / `_p99` (LoadedModel) and `bare_window_ratio_p50` / `_p99`: window model
  over row model;
- `numpy_statistics_p50_us`: what computing the 14 statistics in Python (numpy, the float64
  reference) costs per window, the work the window model saves a prediction service;
- `max_probability_difference`: in-graph statistics against the float64 reference, on 2,000
  windows.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.bench.common import host_info
from tests.support.onnx_fixtures import (
    WINDOW,
    make_windows,
    to_onnx_window,
    train_script,
    train_window_booster,
    window_statistics,
)
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache.model import LoadedModel, load_model

ORG = "bench-windows"
TREES = 100
LEAVES = 31


def row_model_bytes(model_text: str, org_id: str, version: str) -> bytes:
    """The same trees as the training script exports a model on the 14 statistics as rows."""
    script = train_script()
    config = {
        "featureColumns": script.window_feature_names(WINDOW),
        "derivedFeatures": [],
        "windows": None,
        "organizationId": org_id,
        "version": version,
        "decisionPolicy": {"type": "fixed", "threshold": 0.5},
    }
    return bytes(script.finish(script.convert(model_text, config), config, 0.5, 0))


def deploy(base: Path, version: str, data: bytes) -> Deployment:
    path = base / "models" / ORG / f"deployed_{version}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Deployment(
        ORG, version, str(path), hashlib.sha256(data).hexdigest(), "2026-06-01T12:00:00Z", 1
    )


def bare_session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def timed(calls: dict[str, Callable[[], Any]], count: int) -> dict[str, np.ndarray]:
    """Microseconds per call of each function, interleaved call by call in a random order each
    round: a busy moment, or the caches the previous call left, hit every function alike."""
    for call in calls.values():  # warm
        for _ in range(200):
            call()
    names = list(calls)
    spent = {name: np.empty(count) for name in names}
    clock = time.perf_counter_ns
    orders = np.random.default_rng(0).permuted(np.tile(np.arange(len(names)), (count, 1)), axis=1)
    for i, order in enumerate(orders):
        for j in order:
            call = calls[names[j]]
            started = clock()
            call()
            spent[names[j]][i] = clock() - started
    return {name: values / 1000 for name, values in spent.items()}


def figures(
    window_model: LoadedModel,
    row_model: LoadedModel,
    window_bytes: bytes,
    row_bytes: bytes,
    calls: int,
) -> dict[str, Any]:
    windows, _ = make_windows(2000, seed=9)
    statistics = window_statistics(windows)
    one_window, one_row = windows[:1], statistics[:1]
    bare_window, bare_row = bare_session(window_bytes), bare_session(row_bytes)
    outputs = ["failure_probability", "failure_alarm"]
    spent = timed(
        {
            "window": lambda: window_model.decide(one_window),
            "row": lambda: row_model.decide(one_row),
            "bare_window": lambda: bare_window.run(outputs, {"window": one_window}),
            "bare_row": lambda: bare_row.run(outputs, {"input": one_row}),
            "numpy_statistics": lambda: window_statistics(one_window),
        },
        calls,
    )
    result: dict[str, Any] = {}
    for name, values in spent.items():
        result[f"{name}_p50_us"] = round(float(np.percentile(values, 50)), 2)
        result[f"{name}_p99_us"] = round(float(np.percentile(values, 99)), 2)
    for prefix, window, row in (("", "window", "row"), ("bare_", "bare_window", "bare_row")):
        for q in ("p50", "p99"):
            ratio = result[f"{window}_{q}_us"] / result[f"{row}_{q}_us"]
            result[f"{prefix}window_ratio_{q}"] = round(ratio, 3)
    difference = window_model.predict(windows) - row_model.predict(statistics)
    result["max_probability_difference"] = float(np.abs(difference).max())
    return result


def run(quick: bool = False) -> dict[str, Any]:
    windows, labels = make_windows(5000 if quick else 20_000, seed=1)
    booster = train_window_booster(windows, labels, rounds=TREES, leaves=LEAVES)
    window_version, row_version = (f"v2026-06-01T00-00-00-000Z_0000000{n}" for n in (1, 2))
    window_bytes = to_onnx_window(booster, org_id=ORG, version=window_version).SerializeToString()
    row_bytes = row_model_bytes(booster.model_to_string(), ORG, row_version)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        window_model = load_model(base, ORG, deploy(base, window_version, window_bytes))
        row_model = load_model(base, ORG, deploy(base, row_version, row_bytes))
        result = figures(
            window_model, row_model, window_bytes, row_bytes, 2_000 if quick else 20_000
        )
    shape = {"length": WINDOW["length"], "columns": len(WINDOW["columns"])}
    model = {**shape, "statistics": len(WINDOW["stats"]), "trees": booster.num_trees()}
    return {"model": model, **result, "host": host_info()}
