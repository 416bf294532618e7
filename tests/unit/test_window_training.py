"""A window model trains from the extracted window files: its ONNX model takes the recent buckets
of an asset, computes their statistics and the derived features itself, and scores as the native
model does on the reference statistics; the purge gap keeps the fit examples away from the inner
fold, and a gap that leaves nothing to fit on is refused with the numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from tests.unit.test_train_script import script_config, script_module, write_dataset
from training_tasks.config.derived import compile_features
from training_tasks.config.derived import evaluate as derived_columns
from training_tasks.config.training import resolve
from training_tasks.config.window_features import WindowSpec, window_statistics
from training_tasks.stages.train import script_config as stage_script_config

SCRIPT = script_module()
INTERVAL_S = 600
LENGTH = 12
HORIZON_BUCKETS = 36  # a failure within the next 6 hours labels a bucket 1
COLUMNS = ["vibration", "temperature"]
STATS = ["mean", "std", "min", "max", "slope", "last", "delta"]
WINDOWS = {
    "interval": "10min",
    "intervalSeconds": INTERVAL_S,
    "length": LENGTH,
    "columns": COLUMNS,
    "stats": STATS,
    "maxGap": "30min",
    "maxGapSeconds": 1800,
}
NAMES = [f"{column}__{stat}" for column in COLUMNS for stat in STATS]
DERIVED = {
    "vibration_trend": "vibration__slope * 12 / (vibration__std + 0.1)",
    "heat_range": "temperature__max - temperature__min",
}
TARGET = "failure_within_horizon"
START_S = 1_767_225_600  # 2026-01-01T00:00:00Z
BUCKETS = 3000  # per asset, about 21 days
SPLIT_S = START_S + 2400 * INTERVAL_S  # the holdout's first example time
GAP_S = (HORIZON_BUCKETS + LENGTH) * INTERVAL_S  # horizon + window span, as the service sets it


@dataclass
class Asset:
    """One asset's buckets: end times, the two columns, labels, and whether a window ends there."""

    name: str
    end_s: np.ndarray
    values: np.ndarray  # [buckets, columns] float32
    label: np.ndarray
    whole: np.ndarray  # the bucket and the LENGTH - 1 before it are consecutive


def asset(rng: np.random.Generator, number: int) -> Asset:
    """Failures every 150-400 buckets, vibration drifting up in the hours before each; asset 0
    has a 20-bucket hole (a break in its series) that its windows must not span."""
    failures = np.cumsum(rng.integers(150, 400, size=BUCKETS // 150))
    k = np.arange(BUCKETS)
    ahead = failures[np.minimum(np.searchsorted(failures, k, side="right"), len(failures) - 1)] - k
    label = ((ahead > 0) & (ahead <= HORIZON_BUCKETS)).astype(np.int8)
    drift = np.where(label == 1, 0.06 * (HORIZON_BUCKETS - ahead + 1), 0.0)
    vibration = 1.0 + 0.3 * rng.standard_normal(BUCKETS) + drift
    temperature = 60.0 + number + 2.0 * rng.standard_normal(BUCKETS) + 3 * label
    kept = np.ones(BUCKETS, bool)
    if number == 0:
        kept[400:420] = False
    k = k[kept]
    consecutive = np.r_[False, np.diff(k) == 1]
    run = np.cumsum(consecutive)
    whole = np.zeros(len(k), bool)
    whole[LENGTH - 1 :] = run[LENGTH - 1 :] - run[: len(k) - LENGTH + 1] == LENGTH - 1
    values = np.column_stack([vibration, temperature])[kept].astype(np.float32)
    end_s = START_S + (k + 1) * INTERVAL_S
    return Asset(f"pump-{number}", end_s, values, label[kept], whole)


def window_table(assets: list[Asset], first_s: int, examples_from_s: int, end_s: int) -> pa.Table:
    """A window file: rows of bucket ends in [first_s, end_s), grouped by asset in bucket order,
    with example = 1 where a whole window ends at a time in [examples_from_s, end_s)."""
    parts = []
    for a in assets:
        rows = (a.end_s >= first_s) & (a.end_s < end_s)
        example = a.whole & (a.end_s >= examples_from_s) & rows
        parts.append((a, rows, example[rows]))
    seconds = np.concatenate([a.end_s[rows] for a, rows, _ in parts])
    columns: dict[str, Any] = {
        "timestamp": pa.array(seconds * 10**6, pa.timestamp("us", tz="UTC")),
        "asset_id": pa.array([a.name for a, rows, _ in parts for _ in range(rows.sum())]),
    }
    for j, column in enumerate(COLUMNS):
        columns[column] = np.concatenate([a.values[rows, j] for a, rows, _ in parts])
    columns[TARGET] = np.concatenate([a.label[rows] for a, rows, _ in parts])
    columns["example"] = np.concatenate([flag for _, _, flag in parts]).astype(np.int8)
    return pa.table(columns)


def write_window_dataset(folder: Path, gap_s: int = GAP_S, assets: int = 5) -> None:
    """train.parquet (examples before the split minus the gap) and holdout.parquet (examples
    from the split on, after the LENGTH - 1 context buckets before it), as extract writes them."""
    rng = np.random.default_rng(7)
    series = [asset(rng, number) for number in range(assets)]
    end_s = START_S + BUCKETS * INTERVAL_S + 1
    folder.mkdir(parents=True, exist_ok=True)
    train = window_table(series, START_S, START_S, SPLIT_S - gap_s)
    holdout = window_table(series, SPLIT_S - (LENGTH - 1) * INTERVAL_S, SPLIT_S, end_s)
    pq.write_table(train, folder / "train.parquet")
    pq.write_table(holdout, folder / "holdout.parquet")


def window_config(folder: Path, **changes: Any) -> dict[str, Any]:
    config = script_config(
        folder,
        featureColumns=COLUMNS,
        targetColumn=TARGET,
        windows=WINDOWS,
        derivedFeatures=compile_features(DERIVED, NAMES),
        purgeGapSeconds=GAP_S,
        labelHorizonSeconds=HORIZON_BUCKETS * INTERVAL_S,
    )
    config["hyperparameters"] |= {"numIterations": 30, "baggingFraction": 1.0, "baggingFreq": 0}
    config.update(changes)
    return config


def train(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run the script's run() on `config`; returns metrics.json."""
    Path(config["outputPath"]).mkdir(parents=True, exist_ok=True)
    path = folder / "training_config.json"
    path.write_text(json.dumps(config))
    metrics: dict[str, Any] = SCRIPT.run(path)
    return metrics


def examples(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows [N, LENGTH, columns], labels, times in seconds) of a file's examples, read here
    independently of the script."""
    table = pq.read_table(folder / name)
    values = np.column_stack([table.column(c).to_numpy() for c in COLUMNS])
    rows = np.flatnonzero(table.column("example").to_numpy() == 1)
    windows = np.stack([values[row - LENGTH + 1 : row + 1] for row in rows])
    seconds = table.column("timestamp").cast(pa.int64()).to_numpy()[rows] // 10**6
    return windows, table.column(TARGET).to_numpy()[rows], seconds


def reference_features(windows: np.ndarray) -> np.ndarray:
    """The float64 reference window statistics, then the derived features over them."""
    stats = SCRIPT.window_features(windows, WINDOWS)
    by_name = {name: stats[:, j] for j, name in enumerate(NAMES)}
    derived = derived_columns(compile_features(DERIVED, NAMES), by_name)
    return np.column_stack([stats, *derived]).astype(np.float32)


def with_window_features_output(model_path: Path) -> ort.InferenceSession:
    """The model with its `window_features` tensor as an extra output."""
    model = onnx.load(str(model_path))
    width = len(NAMES)
    info = helper.make_tensor_value_info("window_features", TensorProto.FLOAT, ["N", width])
    model.graph.output.append(info)
    return ort.InferenceSession(model.SerializeToString())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("windows")
    write_window_dataset(folder)
    return folder, train(folder, window_config(folder))


def test_the_model_takes_a_window_of_buckets_and_gives_the_probability_and_the_alarm(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = trained
    session = ort.InferenceSession(str(folder / "out" / "model.onnx"))

    (model_input,) = session.get_inputs()
    assert (model_input.name, model_input.type) == ("window", "tensor(float)")
    assert model_input.shape[1:] == [LENGTH, len(COLUMNS)]
    assert [o.name for o in session.get_outputs()] == ["failure_probability", "failure_alarm"]


def test_onnx_probabilities_on_holdout_windows_equal_the_native_model_on_reference_features(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, metrics = trained
    windows, y, _ = examples(folder, "holdout.parquet")
    session = ort.InferenceSession(str(folder / "out" / "model.onnx"))

    probability, alarm = session.run(None, {"window": windows})
    native = lgb.Booster(model_file=str(folder / "out" / "model.txt"))

    assert native.feature_name() == [*NAMES, *DERIVED]
    np.testing.assert_allclose(probability, native.predict(reference_features(windows)), atol=1e-5)
    assert not np.isnan(probability).any()
    assert np.array_equal(alarm, probability >= np.float32(metrics["decision_threshold"]))
    assert metrics["auc"] > 0.9  # the drift before a failure is learnable
    assert metrics["holdout_rows"] == len(y)


def test_the_graph_computes_the_window_statistics_as_training_did(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = trained
    windows, _, _ = examples(folder, "holdout.parquet")

    session = with_window_features_output(folder / "out" / "model.onnx")
    (graph,) = session.run(["window_features"], {"window": windows})

    expected = SCRIPT.window_features(windows, WINDOWS)
    assert graph.shape == expected.shape == (len(windows), len(NAMES))
    assert not np.isnan(graph).any()
    np.testing.assert_allclose(graph, expected, atol=1e-4, rtol=0)
    service = window_statistics(windows, WindowSpec.from_wire(WINDOWS))
    assert np.array_equal(service, expected)  # the service's reference is the script's


def test_the_metadata_holds_the_columns_the_window_and_the_feature_names(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, metrics = trained
    model = onnx.load(str(folder / "out" / "model.onnx"))
    metadata = {p.key: p.value for p in model.metadata_props}

    assert json.loads(metadata["feature_columns"]) == COLUMNS
    assert json.loads(metadata["window"]) == {
        "interval": "10min",
        "intervalSeconds": INTERVAL_S,
        "length": LENGTH,
        "columns": COLUMNS,
        "stats": STATS,
    }
    assert json.loads(metadata["window_feature_columns"]) == NAMES
    derived = json.loads(metadata["derived_features"])
    assert [d["name"] for d in derived] == list(DERIVED)
    assert float(metadata["decision_threshold"]) == metrics["decision_threshold"]


def test_the_fit_examples_end_the_gap_before_the_inner_fold_and_train_a_bare_lightgbm_model(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, metrics = trained
    windows, y, seconds = examples(folder, "train.parquet")
    order = np.argsort(seconds, kind="stable")
    cut = len(y) - int(len(y) * 0.2)
    fit = order[seconds[order] < seconds[order[cut]] - GAP_S]

    assert (metrics["train_rows"], metrics["inner_rows"]) == (len(y), len(y) - cut)
    assert (metrics["fit_rows"], metrics["purge_gap_s"]) == (len(fit), GAP_S)
    assert 0 < len(fit) < cut
    params, iterations = SCRIPT.lightgbm_params(window_config(folder)["hyperparameters"])
    x = reference_features(windows)
    fit_set = lgb.Dataset(x[fit], label=y[fit], feature_name=[*NAMES, *DERIVED])
    bare = lgb.train({**params, "verbosity": -1}, fit_set, num_boost_round=iterations)
    holdout = reference_features(examples(folder, "holdout.parquet")[0])
    native = lgb.Booster(model_file=str(folder / "out" / "model.txt"))
    assert np.array_equal(native.predict(holdout), bare.predict(holdout))


def test_a_window_model_without_derived_features_feeds_the_statistics_to_the_trees(
    tmp_path: Path,
) -> None:
    write_window_dataset(tmp_path, assets=3)
    config = window_config(tmp_path, derivedFeatures=[])
    config["windows"] = {**WINDOWS, "stats": ["mean", "slope", "last"]}
    config["hyperparameters"]["numIterations"] = 10

    train(tmp_path, config)

    windows, _, _ = examples(tmp_path, "holdout.parquet")
    (probability, _) = ort.InferenceSession(str(tmp_path / "out" / "model.onnx")).run(
        None, {"window": windows}
    )
    stats = SCRIPT.window_features(windows, config["windows"])
    native = lgb.Booster(model_file=str(tmp_path / "out" / "model.txt"))
    assert native.num_feature() == 6
    np.testing.assert_allclose(probability, native.predict(stats), atol=1e-5)


def test_a_gap_that_leaves_no_example_to_fit_on_is_refused_with_the_numbers(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = trained
    config = window_config(folder, outputPath=str(folder / "refused"), purgeGapSeconds=2_000_000)

    with pytest.raises(SCRIPT.ScriptError) as refused:
        train(folder, config)

    message = str(refused.value)
    assert "purgeGapSeconds 2000000 leaves no example to fit on" in message
    assert "the last 0.2 of the" in message and "starts at 2026-01-" in message
    assert "widen dataRange" in message
    assert not (folder / "refused" / "model.onnx").exists()


def test_an_example_whose_window_spans_a_break_is_refused_naming_its_row(tmp_path: Path) -> None:
    write_window_dataset(tmp_path, assets=2)
    table = pq.read_table(tmp_path / "train.parquet")
    flag = table.column("example").to_numpy().copy()
    # asset 0's first bucket after its 20-bucket hole: its window would reach across the hole
    seconds = table.column("timestamp").cast(pa.int64()).to_numpy() // 10**6
    row = int(np.flatnonzero(seconds == START_S + 421 * INTERVAL_S)[0])
    flag[row] = 1
    table = table.set_column(table.schema.get_field_index("example"), "example", pa.array(flag))
    pq.write_table(table, tmp_path / "train.parquet")

    with pytest.raises(SCRIPT.ScriptError, match=rf"example row {row} \(asset pump-0, bucket"):
        train(tmp_path, window_config(tmp_path))


def test_featurecolumns_other_than_the_window_columns_are_refused(tmp_path: Path) -> None:
    write_window_dataset(tmp_path, assets=2)

    with pytest.raises(SCRIPT.ScriptError, match="must be the window columns"):
        train(tmp_path, window_config(tmp_path, featureColumns=["vibration"]))


def test_a_single_reading_model_fits_before_the_inner_fold_minus_the_gap(tmp_path: Path) -> None:
    write_dataset(tmp_path, train_rows=4000, holdout_rows=500)  # one row a second

    without = train(tmp_path, script_config(tmp_path, outputPath=str(tmp_path / "a")))
    gapped = train(
        tmp_path, script_config(tmp_path, outputPath=str(tmp_path / "b"), purgeGapSeconds=100)
    )

    assert (without["fit_rows"], without["inner_rows"], without["purge_gap_s"]) == (3200, 800, 0)
    assert (gapped["fit_rows"], gapped["inner_rows"], gapped["purge_gap_s"]) == (3100, 800, 100)


def test_the_train_stage_hands_the_script_the_window_spec_the_gap_and_window_derived_features(
    tmp_path: Path,
) -> None:
    write_window_dataset(tmp_path, assets=3)
    request = {
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-22T00:00:00Z"},
        "windows": {key: WINDOWS[key] for key in ("interval", "length", "columns", "stats")},
        "derivedFeatures": DERIVED,
        "hyperparameters": {"numIterations": 10},
    }
    config = resolve(request, "acme-plant", {}, datetime(2026, 2, 1, tzinfo=UTC), label_horizon_h=6)
    (tmp_path / "out").mkdir()

    wire = stage_script_config(
        config,
        version="v2026-02-01T00-00-00-000Z_a1b2c3d4",
        train_path=tmp_path / "train.parquet",
        holdout_path=tmp_path / "holdout.parquet",
        output_dir=tmp_path / "out",
    )

    assert wire["windows"]["intervalSeconds"] == INTERVAL_S and wire["featureColumns"] == COLUMNS
    assert (wire["purgeGapSeconds"], wire["labelHorizonSeconds"]) == (GAP_S, 6 * 3600)
    assert wire["derivedFeatures"] == compile_features(DERIVED, NAMES)
    (tmp_path / "training_config.json").write_text(json.dumps(wire))
    metrics = SCRIPT.run(tmp_path / "training_config.json")
    assert metrics["purge_gap_s"] == GAP_S
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert session.get_inputs()[0].name == "window"


def test_a_window_holding_an_empty_reading_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_window_dataset(tmp_path, assets=2)
    table = pq.read_table(tmp_path / "train.parquet")
    temperature = table.column("temperature").to_numpy().copy()
    temperature[500] = np.nan
    index = table.schema.get_field_index("temperature")
    pq.write_table(table.set_column(index, "temperature", pa.array(temperature)), tmp_path / "t")
    (tmp_path / "t").replace(tmp_path / "train.parquet")

    with pytest.raises(SCRIPT.ScriptError, match=r"\['temperature'\] hold NaN.*forward-fill"):
        train(tmp_path, window_config(tmp_path))


def test_a_gap_on_rows_without_a_time_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path, train_rows=600, holdout_rows=100)
    table = pq.read_table(tmp_path / "train.parquet").drop_columns(["timestamp"])
    pq.write_table(table, tmp_path / "train.parquet")

    with pytest.raises(SCRIPT.ScriptError, match="no 'timestamp' column, which purgeGapSeconds 60"):
        train(tmp_path, script_config(tmp_path, purgeGapSeconds=60))
