"""A data window can end at the newest row of the SCADA table (`windowEnd: "latestData"`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from training_tasks.config.org import SchemaConfig, parse_model_config, parse_org_config
from training_tasks.config.training import TrainingConfig, from_wire, resolve
from training_tasks.demo.scada import (
    ACME_LAYOUT,
    FEATURES,
    demo_org_config,
    generate_sensor_frame,
    write_scada_sqlite,
)
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.stages.extract.bounds import TimeSpan, latest_timestamp, table_time_span
from training_tasks.stages.extract.stage import extract

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NEWEST = datetime(2026, 4, 30, 23, 50, tzinfo=UTC)
DEFAULTS = {
    "featureColumns": ["temperature", "pressure"],
    "targetColumn": "failure",
    "dataWindowDays": 30,
    "windowEnd": "latestData",
}
T0 = datetime(2024, 3, 1, tzinfo=UTC)
ACME_SCHEMA = SchemaConfig(
    table="sensor_readings",
    timestamp_column="ts",
    asset_column="asset_id",
    column_mappings={**ACME_LAYOUT.columns, "failure": "failure_within_48h"},
)


@pytest.fixture(scope="module")
def acme_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("scada") / "scada.db"
    frame = generate_sensor_frame(assets=3, days=10, interval_min=30, seed=3, start=T0)
    write_scada_sqlite(path, frame, ACME_LAYOUT)
    return f"sqlite:///{path}"


def test_a_latest_data_window_ends_just_after_the_newest_row() -> None:
    config = resolve({}, "acme-corp", DEFAULTS, NOW, latest_data=lambda: NEWEST)
    assert config.end == NEWEST + timedelta(seconds=1)
    assert config.end - config.start == timedelta(days=30)
    assert config.to_wire()["dataRange"] == {
        "startDate": "2026-03-31T23:50:01Z",
        "endDate": "2026-04-30T23:50:01Z",
    }
    assert from_wire(config.to_wire()) == config, "the run records the resolved range"


def test_the_default_window_still_ends_now_and_reads_no_table() -> None:
    def unread() -> datetime:
        raise AssertionError("a window ending now must not query the table")

    defaults = {k: v for k, v in DEFAULTS.items() if k != "windowEnd"}
    config = resolve({}, "acme-corp", defaults, NOW, latest_data=unread)
    assert (config.start, config.end) == (NOW - timedelta(days=30), NOW)


def test_a_request_may_set_the_window_and_its_end_itself() -> None:
    request = {"windowEnd": "latestData", "dataWindowDays": 7}
    defaults = {k: v for k, v in DEFAULTS.items() if k != "windowEnd"}
    config = resolve(request, "acme-corp", defaults, NOW, latest_data=lambda: NEWEST)
    assert config.end - config.start == timedelta(days=7)
    assert config.end == NEWEST + timedelta(seconds=1)
    now_config = resolve({"windowEnd": "now"}, "acme-corp", DEFAULTS, NOW)
    assert now_config.end == NOW, "the request's windowEnd wins over the org's"


def test_a_data_range_wins_over_the_orgs_latest_data_window() -> None:
    rng = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-01T00:00:00Z"}
    config = resolve({"dataRange": rng}, "acme-corp", DEFAULTS, NOW)
    assert config.end == datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("request_doc", "field", "words"),
    [
        ({"windowEnd": "latest"}, "windowEnd", 'must be "now"'),
        ({"windowEnd": None}, "windowEnd", '"latestData"'),
        ({"dataWindowDays": 0}, "dataWindowDays", "0"),
        (
            {
                "windowEnd": "latestData",
                "dataRange": {"startDate": "2026-01-01", "endDate": "2026-02-01"},
            },
            "windowEnd",
            "cannot be combined with dataRange",
        ),
    ],
)
def test_a_bad_window_in_a_request_is_refused_naming_the_field(
    request_doc: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(request_doc, "acme-corp", DEFAULTS, NOW, latest_data=lambda: NEWEST)
    assert caught.value.field == field
    assert words in caught.value.problem


def test_a_bad_window_end_in_the_org_config_names_the_field_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model_config({"windowEnd": "newest"})
    assert caught.value.field == "mlModelConfig.windowEnd"
    assert '"now"' in caught.value.problem and '"latestData"' in caught.value.problem
    assert "'newest'" in caught.value.problem
    assert parse_model_config({"windowEnd": "latestData"})["windowEnd"] == "latestData"


def test_a_latest_data_window_on_an_empty_table_says_so() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, "acme-corp", DEFAULTS, NOW, latest_data=lambda: None)
    assert caught.value.field == "mlModelConfig.windowEnd"
    assert "holds no rows" in caught.value.problem


def test_the_demo_config_trains_on_the_newest_rows_whenever_it_is_run() -> None:
    doc = demo_org_config("acme-corp", "sqlite:///scada.db", ACME_LAYOUT, window_days=120)
    org = parse_org_config(doc, "acme-corp")
    assert org.ml_model_config["windowEnd"] == "latestData"
    later = NOW + timedelta(days=400)
    config = resolve(None, "acme-corp", org.ml_model_config, later, latest_data=lambda: NEWEST)
    assert config.end == NEWEST + timedelta(seconds=1)


def test_the_table_span_is_read_with_the_configured_names(acme_db: str) -> None:
    span = table_time_span(acme_db, ACME_SCHEMA, "acme", connect_timeout_s=5)
    assert span.first == T0
    assert span.last == T0 + timedelta(days=10) - timedelta(minutes=30)
    assert latest_timestamp(acme_db, ACME_SCHEMA, "acme", connect_timeout_s=5) == span.last
    assert span.describe() == (
        "the table holds rows from 2024-03-01T00:00:00Z to 2024-03-10T23:30:00Z"
    )


def test_the_table_span_checks_the_timestamp_column_like_extract(acme_db: str) -> None:
    schema = SchemaConfig("sensor_readings", "time")
    with pytest.raises(ExtractError, match=r"schemaConfig.timestampColumn names column 'time'"):
        table_time_span(acme_db, schema, "acme", connect_timeout_s=5)
    with pytest.raises(ExtractError, match=r"schemaConfig.table 'readings' does not exist"):
        table_time_span(acme_db, SchemaConfig("readings", "ts"), "acme", connect_timeout_s=5)


def test_an_empty_range_names_the_range_the_table_holds(acme_db: str, tmp_path: Path) -> None:
    start = T0 + timedelta(days=100)
    config = TrainingConfig(
        organization_id="acme",
        start=start,
        end=start + timedelta(days=5),
        hyperparameters={},
        validation_split=0.2,
        target_column="failure",
        feature_columns=FEATURES,
    )
    with pytest.raises(ExtractError) as caught:
        extract(acme_db, ACME_SCHEMA, config, tmp_path / "out")
    message = str(caught.value)
    assert "no rows in dataRange 2024-06-09T00:00:00Z to 2024-06-14T00:00:00Z" in message
    assert "the table holds rows from 2024-03-01T00:00:00Z to 2024-03-10T23:30:00Z" in message
    assert 'widen dataRange or use "windowEnd": "latestData"' in message


def test_an_empty_table_is_described_as_holding_no_rows() -> None:
    assert TimeSpan(None, None).describe() == "the table holds no rows at all"
