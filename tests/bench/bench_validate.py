"""Wall time of the validate stage on a 100k-row holdout, with parity and the deployed comparison.

Run alone with `python -m tests.bench bench_validate`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH = 20


def run(quick: bool = False) -> dict[str, Any]:
    """Validate a realistic model (200 trees, 63 leaves, 20 features) several times; report timings."""
    import lightgbm as lgb

    from tests.support.onnx_fixtures import (
        ORG_ID,
        TARGET,
        VERSION,
        make_data,
        save_model,
        write_holdout,
    )
    from training_tasks.config.org import THRESHOLD_DEFAULTS
    from training_tasks.stages.validate.stage import validate

    rows, repeats = (20_000, 2) if quick else (100_000, 5)
    features = [f"sensor_{i:02d}" for i in range(WIDTH)]
    params = {"objective": "binary", "num_leaves": 63, "verbosity": -1}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        train_x, train_y = make_data(50_000, seed=1, width=WIDTH)
        booster = lgb.train(params, lgb.Dataset(train_x, train_y), num_boost_round=200)
        model = save_model(base / "new", booster, feature_columns=features)
        deployed = save_model(base / "deployed", booster, feature_columns=features)
        holdout_x, holdout_y = make_data(rows, seed=2, width=WIDTH)
        holdout = write_holdout(
            base / "holdout.parquet", holdout_x, holdout_y, feature_columns=features
        )
        walls_ms, reports = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            report = validate(
                org_id=ORG_ID,
                version=VERSION,
                model_path=model,
                holdout_path=holdout,
                feature_columns=features,
                target_column=TARGET,
                thresholds=THRESHOLD_DEFAULTS,
                native_model_path=base / "new" / "model.txt",
                deployed_model_path=deployed,
            )
            walls_ms.append((time.perf_counter() - started) * 1000)
            reports.append(report)
    last = reports[-1]
    assert last.passed, last.failures
    return {
        "holdout_rows": rows,
        "model_size_mb": round((last.model_size_bytes or 0) / 2**20, 2),
        "validate_ms_first": round(walls_ms[0], 1),
        "validate_ms_median": round(statistics.median(walls_ms), 1),
        "single_row_p50_ms": round(last.latency["singleRowP50Ms"], 4),
        "single_row_p99_ms": round(last.latency["singleRowP99Ms"], 4),
        "batch_1000_ms": round(last.latency["batchMs"], 2),
        "session_mb_first": round(reports[0].memory["sessionMb"], 2),
        "session_mb_last": round(last.memory["sessionMb"], 2),
        "parity_max_abs_diff": last.parity["maxAbsDiff"],
    }
