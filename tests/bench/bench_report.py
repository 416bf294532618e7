"""The report of a version: its build time and size on a 100k-row holdout, and the validate
stage's time (validate and write) with and without it.

Run alone with `python -m tests.bench bench_report`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH = 20


def run(quick: bool = False) -> dict[str, Any]:
    """Validate a 200-tree model against a deployed one, writing the report or not."""
    import lightgbm as lgb

    from tests.support.onnx_fixtures import ORG_ID, TARGET, VERSION, make_data, save_model
    from tests.unit.test_report import _parquet
    from training_tasks.config.org import THRESHOLD_DEFAULTS
    from training_tasks.stages.validate.stage import validate

    rows, repeats = (20_000, 2) if quick else (100_000, 5)
    features = [f"sensor_{i:02d}" for i in range(WIDTH)]
    params = {"objective": "binary", "num_leaves": 63, "verbosity": -1}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        train_x, train_y = make_data(4 * rows, seed=1, width=WIDTH)
        booster = lgb.train(params, lgb.Dataset(train_x, train_y), num_boost_round=200)
        folder = base / "artifacts" / ORG_ID / VERSION
        model = save_model(folder, booster, feature_columns=features)
        deployed = save_model(
            base / "models" / ORG_ID / "deployed_v2026-05-01T12-00-00-000Z_0badc0de",
            booster,
            feature_columns=features,
        )
        _parquet(base / "train.parquet", train_x, train_y, features)
        holdout = _parquet(
            base / "holdout.parquet", *make_data(rows, seed=2, width=WIDTH), features
        )
        timings: dict[str, list[float]] = {"with": [], "without": [], "build": []}
        for i in range(2 * repeats):
            started = time.perf_counter()
            report = validate(
                org_id=ORG_ID,
                version=VERSION,
                model_path=model,
                holdout_path=holdout,
                feature_columns=features,
                target_column=TARGET,
                thresholds=THRESHOLD_DEFAULTS,
                native_model_path=folder / "model.txt",
                deployed_model_path=deployed,
            )
            with_report = i % 2 == 0
            if not with_report:  # the stage as it was: validation.json alone
                report = _without_report(report)
            report.write(folder / "validation.json")
            timings["with" if with_report else "without"].append(time.perf_counter() - started)
            if with_report:
                timings["build"].append(report.html_report["buildMs"])
        size = (folder / "report.html").stat().st_size
        data_size = (folder / "report_data.json").stat().st_size
    first_build_ms = timings["build"][0]
    return {
        "holdout_rows": rows,
        "training_rows": 4 * rows,
        "report_build_ms_first": first_build_ms,  # includes importing matplotlib
        "report_build_ms_median": statistics.median(timings["build"][1:] or timings["build"]),
        "report_html_kb": round(size / 1024, 1),
        "report_data_kb": round(data_size / 1024, 1),
        "validate_s_with_report_median": round(statistics.median(timings["with"]), 3),
        "validate_s_without_report_median": round(statistics.median(timings["without"]), 3),
    }


def _without_report(report: Any) -> Any:
    """The report with nothing to draw and no file written, as validation was before."""
    import dataclasses

    from training_tasks.stages.validate import report as module

    class Plain(module.ValidationReport):
        def write(self, path: Path) -> Path:
            module.write_json_atomic(path, self.as_dict())
            module.fsync_dir(path.parent)
            return path

    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    return Plain(**fields)
