"""Benchmark: what reproducible training, threshold selection and in-graph derived features cost.

Run with `python -m tests.bench bench_model_options [--quick]`. Two figures, each a ratio against
a baseline measured in the same run:

- `fit_ratio`: the bundled script's fit (early stopping on the inner fold) plus its threshold
  selection (maxF1), against a bare `lightgbm.train` with the same parameters and the same early
  stopping on the same rows. Goal: at most 1.1.
- `inference_ratio`: single-row p50 of a model that computes three derived features inside its
  graph, against the same trees given the derived columns precomputed. Goal: at most 1.2.
  `operators_in_front_of_the_trees` lists what the graph computes them with.

And `demo_policies`: on the demo's rare-failure data (`initech`, 8 bearings, 60 days), the
holdout precision and recall with their 95% Wilson intervals for raw columns at 0.5, the
derived feature at 0.5, and the derived feature under each decision policy.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from types import ModuleType
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort

from training_tasks.config.derived import compile_features, evaluate
from training_tasks.config.settings import BUNDLED_SCRIPT

FIT_GOAL = 1.1
INFERENCE_GOAL = 1.2
RAW = ["torque", "rpm", "process_temp", "air_temp", "tool_wear"]
DERIVED = {
    "power_w": "torque * rpm * 2 * pi / 60",
    "temp_diff": "process_temp - air_temp",
    "strain": "tool_wear * torque",
}
HYPER = {
    "numLeaves": 31,
    "learningRate": 0.1,
    "numIterations": 1000,
    "earlyStoppingRounds": 20,
    "metric": "auc",
    "objective": "binary",
    "verbosity": -1,
    "featureFraction": 0.9,
    "baggingFraction": 0.8,
    "baggingFreq": 5,
    "minDataInLeaf": 20,
    "seed": 42,
}


def script_module() -> ModuleType:
    """The bundled training script, imported by path (it imports nothing from the service)."""
    spec = importlib.util.spec_from_file_location("bundled_train_model", BUNDLED_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.emit = lambda *args, **kwargs: None  # no progress lines on the bench's stdout
    return module


def machine_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rare failures that depend on products and differences of the raw sensors (about 3%)."""
    rng = np.random.default_rng(seed)
    torque = rng.normal(40, 10, rows)
    rpm = rng.normal(1500, 180, rows) - (torque - 40) * 8
    air = 300 + np.cumsum(rng.normal(0, 0.05, rows)) % 8
    process = air + 10 + rng.normal(0, 1, rows)
    wear = rng.uniform(0, 250, rows)
    power = torque * rpm * 2 * np.pi / 60
    failing = (power < 3500) | (power > 9000) | (wear * torque > 11000) | (process - air < 8.6)
    x = np.column_stack([torque, rpm, process, air, wear]).astype(np.float32)
    return x, failing.astype(np.int8)


def with_derived(x: np.ndarray) -> np.ndarray:
    columns = {name: x[:, i] for i, name in enumerate(RAW)}
    return np.column_stack([x, *evaluate(compile_features(DERIVED, RAW), columns)])


def fit_figures(tm: ModuleType, rows: int, repeats: int) -> dict[str, Any]:
    x, y = machine_data(rows)
    full = with_derived(x)
    cut = rows - int(rows * 0.2)
    params, iterations = tm.lightgbm_params(HYPER)
    names = [*RAW, *DERIVED]
    policy = {"type": "maxF1"}

    def script_way() -> float:
        inner = (np.asfortranarray(full[cut:]), y[cut:])
        started = time.perf_counter()
        booster = tm.fit(
            dict(params), iterations, [np.asfortranarray(full[:cut]), y[:cut]], inner, names
        )
        probability = booster.predict(inner[0])
        tm.choose_threshold(policy, probability, inner[1])
        return time.perf_counter() - started

    def bare_way() -> float:
        fit_x, inner_x = np.asfortranarray(full[:cut]), np.asfortranarray(full[cut:])
        started = time.perf_counter()
        train_set = lgb.Dataset(fit_x, label=y[:cut])
        valid = lgb.Dataset(inner_x, label=y[cut:], reference=train_set)
        lgb.train(dict(params), train_set, num_boost_round=iterations, valid_sets=[valid])
        return time.perf_counter() - started

    script, bare = [], []
    for _ in range(repeats):  # interleaved, so a busy moment hits both alike
        script.append(script_way())
        bare.append(bare_way())
    ratio = statistics.median(script) / statistics.median(bare)
    return {
        "rows": rows,
        "features": len(names),
        "script_fit_and_threshold_s": round(statistics.median(script), 3),
        "bare_fit_s": round(statistics.median(bare), 3),
        "fit_ratio": round(ratio, 3),
        "fit_goal": FIT_GOAL,
        "fit_goal_met": ratio <= FIT_GOAL,
    }


def inference_figures(tm: ModuleType, rows: int, calls: int) -> dict[str, Any]:
    x, y = machine_data(rows, seed=1)
    full = with_derived(x)
    params, _ = tm.lightgbm_params({**HYPER, "numIterations": 100})
    params.pop("early_stopping_round", None)
    booster = lgb.train(params, lgb.Dataset(full, label=y, feature_name=[*RAW, *DERIVED]), 100)
    text = booster.model_to_string()
    base = {"organizationId": "bench", "version": "v1", "decisionPolicy": {"type": "maxF1"}}
    in_graph = {**base, "featureColumns": RAW, "derivedFeatures": compile_features(DERIVED, RAW)}
    precomputed = {**base, "featureColumns": [*RAW, *DERIVED], "derivedFeatures": []}
    sessions, front = {}, []
    for name, config in (("in_graph", in_graph), ("precomputed", precomputed)):
        model = tm.convert(text, config)
        if name == "in_graph":
            nodes = list(model.graph.node)
            trees = next(i for i, n in enumerate(nodes) if n.op_type.startswith("TreeEnsemble"))
            front = [n.op_type for n in nodes[:trees]]
        data = tm.finish(model, config, 0.5, 42)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions[name] = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    one_raw, one_full = x[:1], full[:1]
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(calls):  # interleaved
        for name, row in (("in_graph", one_raw), ("precomputed", one_full)):
            started = time.perf_counter()
            sessions[name].run(None, {"input": row})
            timings[name].append(time.perf_counter() - started)
    p50 = {name: statistics.median(values) * 1e6 for name, values in timings.items()}
    agree = np.max(
        np.abs(
            sessions["in_graph"].run(None, {"input": x[:2000]})[0]
            - sessions["precomputed"].run(None, {"input": full[:2000]})[0]
        )
    )
    ratio = p50["in_graph"] / p50["precomputed"]
    return {
        "single_row_p50_us_in_graph": round(p50["in_graph"], 2),
        "single_row_p50_us_precomputed": round(p50["precomputed"], 2),
        "operators_in_front_of_the_trees": front,
        "inference_ratio": round(ratio, 3),
        "inference_goal": INFERENCE_GOAL,
        "inference_goal_met": ratio <= INFERENCE_GOAL,
        "max_probability_difference": float(agree),
    }


def demo_policy_figures(tm: ModuleType) -> dict[str, Any]:
    """Holdout precision and recall (95% intervals) of the rare-failure demo per configuration."""
    import json
    import tempfile
    from datetime import UTC, datetime
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from training_tasks.demo import scada
    from training_tasks.stages.validate.metrics import count, wilson

    frame = __import__("pandas").concat(
        scada.iter_rare_failure_frames(
            assets=8, days=60, interval_min=15, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC)
        ),
        ignore_index=True,
    )
    cut = int(len(frame) * 0.8)  # by time, as extract splits
    raw = list(scada.FEATURES)
    derived = scada.RARE_FAILURE_MODEL["derivedFeatures"]
    configurations: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "raw_at_0.5": ({}, {"type": "fixed", "threshold": 0.5}),
        "derived_at_0.5": (derived, {"type": "fixed", "threshold": 0.5}),
        "derived_maxF1": (derived, {"type": "maxF1"}),
        "derived_precisionAtLeast_0.9": (derived, {"type": "precisionAtLeast", "value": 0.9}),
        "derived_recallAtLeast_0.9": (derived, {"type": "recallAtLeast", "value": 0.9}),
    }
    out: dict[str, Any] = {
        "rows": len(frame),
        "holdout_positives": int(frame[scada.TARGET][cut:].sum()),
    }
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        for name, part in (("train", frame[:cut]), ("holdout", frame[cut:])):
            table = pa.Table.from_pandas(
                part.rename(columns={scada.TIMESTAMP: "timestamp"}), preserve_index=False
            )
            pq.write_table(table, base / f"{name}.parquet")
        holdout = frame[cut:]
        for label, (spec, policy) in configurations.items():
            output = base / label
            output.mkdir()
            config = {
                "organizationId": "initech",
                "version": "v1",
                "featureColumns": raw,
                "targetColumn": scada.TARGET,
                "hyperparameters": {**HYPER, "numIterations": 100, "earlyStoppingRounds": None},
                "innerValidationSplit": 0.2,
                "decisionPolicy": policy,
                "derivedFeatures": compile_features(spec, raw),
                "outputPath": str(output),
                "trainDataPath": str(base / "train.parquet"),
                "holdoutDataPath": str(base / "holdout.parquet"),
            }
            config["hyperparameters"].pop("earlyStoppingRounds")
            (output / "config.json").write_text(json.dumps(config))
            tm.run(output / "config.json")
            session = ort.InferenceSession(str(output / "model.onnx"))
            meta = session.get_modelmeta().custom_metadata_map
            threshold = float(meta["decision_threshold"])
            scores = session.run(None, {"input": holdout[raw].to_numpy(np.float32)})[0]
            counts = count(holdout[scada.TARGET].to_numpy(), scores, threshold)
            precision = counts.true_positives / max(1, counts.predicted_positives)
            recall = counts.true_positives / max(1, counts.positives)
            p_low, p_high = wilson(counts.true_positives, counts.predicted_positives) or (0, 0)
            r_low, r_high = wilson(counts.true_positives, counts.positives) or (0, 0)
            out[label] = {
                "threshold": round(threshold, 4),
                "precision": f"{precision:.3f} ({p_low:.3f}-{p_high:.3f})",
                "recall": f"{recall:.3f} ({r_low:.3f}-{r_high:.3f})",
            }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    tm = script_module()
    fit = fit_figures(tm, rows=40_000 if quick else 200_000, repeats=3 if quick else 5)
    inference = inference_figures(tm, rows=20_000, calls=2_000 if quick else 20_000)
    return {**fit, **inference, "demo_policies": demo_policy_figures(tm)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
