"""`mlModelConfig.windows`, the purge gap and the event gates: what a config may say."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from training_tasks.config.org import parse_org_config
from training_tasks.config.training import from_wire
from training_tasks.config.window_features import (
    WindowSpec,
    check_windows,
    parse_duration,
    window_statistics,
)
from training_tasks.errors import ConfigError

NOW = datetime(2024, 6, 1, tzinfo=UTC)
RANGE = {"dataRange": {"startDate": "2024-03-01T00:00:00Z", "endDate": "2024-05-01T00:00:00Z"}}
WINDOWS = {"interval": "10min", "length": 36, "columns": ["vibration", "temperature"]}
LABELS = {
    "eventsTable": "failure_events",
    "assetColumn": "asset_id",
    "timestampColumn": "failed_at",
    "horizonHours": 48,
    "excludeAfterHours": 24,
}


def org_doc(model: dict[str, Any] | None = None, **schema: Any) -> dict[str, Any]:
    return {
        "mlModelConfig": {
            "featureColumns": ["vibration", "temperature", "pressure"],
            "targetColumn": "failure",
            **(model or {}),
        },
        "scadaDbConfig": {"url": "sqlite:///x.db"},
        "schemaConfig": {"table": "readings", "timestampColumn": "ts", "assetColumn": "asset"}
        | schema,
    }


def refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_org_config(doc, "acme")
    return err.value


def test_a_window_spec_gets_all_statistics_and_a_gap_of_three_intervals_by_default() -> None:
    spec = check_windows(WINDOWS, "windows")
    assert (spec.interval_s, spec.length, spec.span_s) == (600, 36, 21600)
    assert spec.stats == ("mean", "std", "min", "max", "slope", "last", "delta")
    assert spec.max_gap_s == 1800
    assert spec.feature_names()[:2] == ["vibration__mean", "vibration__std"]
    assert len(spec.feature_names()) == 14
    assert WindowSpec.from_wire(spec.to_wire()) == spec


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"interval": "10 minutes"}, "windows.interval", '"10min"'),
        ({"interval": "0s"}, "windows.interval", "duration"),
        ({"interval": "8d"}, "windows.interval", "at most 7d"),
        ({"length": 0}, "windows.length", ""),
        ({"columns": []}, "windows.columns", "non-empty"),
        ({"columns": ["a", "a"]}, "windows.columns", "'a'"),
        ({"columns": ["a__b"]}, "windows.columns", "'__'"),
        ({"stats": ["median"]}, "windows.stats", "known"),
        ({"maxGap": "soon"}, "windows.maxGap", "duration"),
        ({"stride": 2}, "windows.stride", ""),
    ],
)
def test_a_bad_window_spec_is_refused_naming_the_field(
    change: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        check_windows({**WINDOWS, **change}, "windows")
    assert err.value.field == field and says in str(err.value)


def test_durations_are_read_in_seconds_minutes_hours_and_days() -> None:
    assert [parse_duration(t, "x") for t in ("30s", "10min", "2h", "1d")] == [30, 600, 7200, 86400]


def test_a_window_model_reads_its_window_columns_and_derives_over_their_statistics() -> None:
    model = {"windows": WINDOWS, "derivedFeatures": {"wobble": "vibration__std / vibration__mean"}}
    org = parse_org_config(org_doc(model), "acme")
    config = org.training_config(RANGE, NOW)
    assert config.feature_columns == ("vibration", "temperature")
    assert config.tree_features == check_windows(WINDOWS, "w").feature_names()
    assert config.derived_features == {"wobble": "vibration__std / vibration__mean"}
    assert config.purge_gap_s == 6 * 3600  # one window, no event horizon
    assert from_wire(config.to_wire()) == config


def test_derived_features_of_a_window_model_cannot_name_raw_columns() -> None:
    err = refused(org_doc({"windows": WINDOWS, "derivedFeatures": {"x": "vibration * 2"}}))
    assert err.field.startswith("mlModelConfig.derivedFeatures") and "vibration" in str(err)


def test_a_request_may_train_single_readings_or_name_the_window_columns_only() -> None:
    org = parse_org_config(org_doc({"windows": WINDOWS}), "acme")
    single = org.training_config({**RANGE, "windows": None}, NOW)
    assert single.windows is None and single.purge_gap_s == 0
    assert single.feature_columns == ("vibration", "temperature", "pressure")
    same = org.training_config({**RANGE, "featureColumns": ["temperature", "vibration"]}, NOW)
    assert same.feature_columns == ("vibration", "temperature")
    with pytest.raises(ConfigError) as err:
        org.training_config({**RANGE, "featureColumns": ["pressure"]}, NOW)
    assert err.value.field == "featureColumns" and "windows.columns" in str(err.value)


def test_the_purge_gap_is_the_label_horizon_plus_one_window() -> None:
    doc = org_doc({"windows": WINDOWS}, labels=LABELS)
    del doc["mlModelConfig"]["targetColumn"]
    config = parse_org_config(doc, "acme").training_config(RANGE, NOW)
    assert config.label_horizon_s == 48 * 3600
    assert config.purge_gap_s == 48 * 3600 + 6 * 3600
    assert config.to_wire()["purgeGapSeconds"] == 54 * 3600


def test_windows_need_an_asset_column() -> None:
    doc = org_doc({"windows": WINDOWS})
    del doc["schemaConfig"]["assetColumn"]
    assert refused(doc).field == "schemaConfig.assetColumn"


def test_event_gates_need_failure_events() -> None:
    gates = {"thresholds": {"minEventRecall": 0.6, "maxFalseAlarmsPerAssetDay": 0.2}}
    err = refused(org_doc(gates))
    assert err.field == "mlModelConfig.thresholds.minEventRecall" and "labels" in str(err)
    doc = org_doc(gates, labels=LABELS)
    del doc["mlModelConfig"]["targetColumn"]
    org = parse_org_config(doc, "acme")
    assert org.thresholds["minEventRecall"] == 0.6
    assert org.thresholds["maxFalseAlarmsPerAssetDay"] == 0.2
    too_high = org_doc({"thresholds": {"minEventRecall": 1.5}}, labels=LABELS)
    assert refused(too_high).field == "mlModelConfig.thresholds.minEventRecall"


def test_window_statistics_are_the_plain_formulas() -> None:
    spec = check_windows({"interval": "1h", "length": 4, "columns": ["a"]}, "w")
    window = np.array([[[1.0], [2.0], [4.0], [7.0]]], dtype=np.float32)
    got = dict(zip(spec.feature_names(), window_statistics(window, spec)[0], strict=True))
    deviations = np.array([1.0, 2.0, 4.0, 7.0]) - 3.5
    assert got["a__mean"] == 3.5 and got["a__min"] == 1.0 and got["a__max"] == 7.0
    assert got["a__std"] == pytest.approx(np.sqrt((deviations**2).mean()))
    assert got["a__slope"] == pytest.approx(2.0)  # least squares over buckets 0..3
    assert got["a__last"] == 7.0 and got["a__delta"] == 6.0
    with pytest.raises(ValueError, match="NaN"):
        window_statistics(np.full((1, 4, 1), np.nan), spec)
