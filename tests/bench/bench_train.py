"""Benchmark: the train stage end to end against a bare `lightgbm.train` of the same data.

Run with `python -m tests.bench.bench_train [--quick]`; prints one JSON object. The goal is a
stage wall time of at most 1.15x the bare fit (from numpy array to booster, in a fresh process).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training_tasks.config.settings import BUNDLED_SCRIPT
from training_tasks.config.training import DEFAULT_HYPERPARAMETERS, TrainingConfig
from training_tasks.sandbox.runner import ResourceLimits, allowed_env
from training_tasks.stages.train import train

FEATURES = [f"sensor_{i}" for i in range(10)]
TARGET = "failure"
GOAL_RATIO = 1.15
VERSION = "v2026-01-01T00-00-00-000Z_0badcafe"

# The baseline: the same read and the same params, then only Dataset + train are timed.
BARE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, pyarrow.parquet as pq, lightgbm as lgb
t1 = time.perf_counter()
features, target, params, rounds = json.loads(sys.argv[2])
table = pq.read_table(sys.argv[1], columns=[*features, target])
x = np.column_stack([table.column(c).to_numpy() for c in features]).astype(np.float32)
y = table.column(target).to_numpy()
t2 = time.perf_counter()
booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=rounds)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "fit_s": t3 - t2}))
"""


def write_data(folder: Path, rows: int, seed: int) -> Path:
    """A learnable failure problem as the extract stage writes it (float32 with NaN, int8)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    clean = np.nan_to_num(x)
    logit = 1.5 * clean[:, 0] - clean[:, 1] * clean[:, 2] + 0.5 * np.sin(2 * clean[:, 3])
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    columns: dict[str, Any] = {"timestamp": pa.array(np.arange(rows).astype("datetime64[s]"))}
    columns.update({name: x[:, j] for j, name in enumerate(FEATURES)})
    columns[TARGET] = y
    path = folder / f"{seed}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def bench_config() -> TrainingConfig:
    return TrainingConfig(
        organization_id="bench",
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 2, 1, tzinfo=UTC),
        hyperparameters=dict(DEFAULT_HYPERPARAMETERS),
        validation_split=0.2,
        target_column=TARGET,
        feature_columns=tuple(FEATURES),
    )


def bare_fit(train_path: Path, config: TrainingConfig) -> dict[str, float]:
    """lightgbm.train in a fresh process with the sandbox's environment."""
    params = config.lightgbm_params()
    rounds = params.pop("num_iterations")
    spec = json.dumps([list(config.feature_columns), config.target_column, params, rounds])
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", BARE, str(train_path), spec],
        env=allowed_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    timings: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    timings["wall_s"] = time.perf_counter() - started
    return timings


def stage_fit(
    train_path: Path, holdout_path: Path, out: Path, config: TrainingConfig
) -> dict[str, float]:
    """Our train stage end to end: config, sandboxed script, read, fit, export, checks."""
    started = time.perf_counter()
    result = train(
        config,
        version=VERSION,
        train_path=train_path,
        holdout_path=holdout_path,
        output_dir=out,
        script=BUNDLED_SCRIPT,
        python=sys.executable,
        timeout_s=1800,
        limits=ResourceLimits(),
    )
    wall_s = time.perf_counter() - started
    fit_s, export_s = result.metrics["fit_seconds"], result.metrics["export_seconds"]
    return {
        "wall_s": wall_s,
        "script_fit_s": fit_s,
        "script_export_s": export_s,
        # start-up, imports, Parquet reads, holdout scoring, metrics, sandbox and checks
        "other_s": wall_s - fit_s - export_s,
        "peak_rss_mb": result.peak_rss_mb,
        "cpu_s": result.cpu_s,
        "auc": result.metrics["auc"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure both, interleaved so machine noise hits them alike; returns a JSON-able dict."""
    rows = 200_000 if quick else 1_000_000
    repeats = 1 if quick else 3
    config = bench_config()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        train_path = write_data(folder, rows, seed=1)
        holdout_path = write_data(folder, rows // 5, seed=2)
        bare, ours = [], []
        for i in range(repeats):
            bare.append(bare_fit(train_path, config))
            ours.append(stage_fit(train_path, holdout_path, folder / f"run{i}", config))
    bare_fit_s = statistics.median(b["fit_s"] for b in bare)
    bare_wall_s = statistics.median(b["wall_s"] for b in bare)
    stage_s = statistics.median(o["wall_s"] for o in ours)
    return {
        "train_rows": rows,
        "holdout_rows": rows // 5,
        "features": len(FEATURES),
        "iterations": DEFAULT_HYPERPARAMETERS["numIterations"],
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "bare": _rounded(bare),
        "stage": _rounded(ours),
        "bare_fit_s": round(bare_fit_s, 3),
        "bare_wall_s": round(bare_wall_s, 3),
        "stage_wall_s": round(stage_s, 3),
        "ratio_stage_to_bare_fit": round(stage_s / bare_fit_s, 3),
        "ratio_stage_to_bare_wall": round(stage_s / bare_wall_s, 3),
        "best_ratio_stage_to_bare_fit": round(
            min(o["wall_s"] for o in ours) / min(b["fit_s"] for b in bare), 3
        ),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": stage_s / bare_fit_s <= GOAL_RATIO,
    }


def _rounded(samples: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: round(v, 3) for k, v in s.items()} for s in samples]


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
