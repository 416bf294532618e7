"""Targets computed from failure events (`schemaConfig.labels`): config checks and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from training_tasks.config.org import SchemaConfig, parse_org_config
from training_tasks.config.training import EVENT_LABEL_COLUMN, TrainingConfig
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.stages.extract.stage import extract

T0 = datetime(2024, 3, 1, tzinfo=UTC)
HOURS = 240
FAILURES = {
    "A": [T0 + timedelta(days=3), T0 + timedelta(days=9, hours=12)],
    "B": [T0 + timedelta(days=6, minutes=30)],
}
LABELS = {
    "eventsTable": "failure_events",
    "assetColumn": "asset_id",
    "timestampColumn": "failed_at",
    "horizonHours": 48,
    "excludeAfterHours": 24,
}


def org_doc(**schema: Any) -> dict[str, Any]:
    return {
        "mlModelConfig": {"featureColumns": ["temp"]},
        "scadaDbConfig": {"url": "sqlite:///x.db"},
        "schemaConfig": {
            "table": "readings",
            "timestampColumn": "ts",
            "assetColumn": "asset",
            "labels": dict(LABELS),
            **schema,
        },
    }


def labelled_schema(**labels: Any) -> SchemaConfig:
    return parse_org_config(org_doc(labels={**LABELS, **labels}), "acme").schema_config


def labelled_config(end: datetime = T0 + timedelta(hours=HOURS)) -> TrainingConfig:
    return TrainingConfig(
        organization_id="acme",
        start=T0,
        end=end,
        hyperparameters={},
        validation_split=0.2,
        target_column=EVENT_LABEL_COLUMN,
        feature_columns=("temp",),
    )


def write_source(url: str, *, zoned: bool = False) -> pd.DataFrame:
    """Hourly readings of assets A and B plus their failure events; the expected labels."""
    stamp = sa.DateTime(timezone=zoned)
    meta = sa.MetaData()
    readings = sa.Table(
        "readings",
        meta,
        sa.Column("ts", stamp),
        sa.Column("asset", sa.Text),
        sa.Column("temp", sa.Float),
    )
    events = sa.Table(
        "failure_events", meta, sa.Column("asset_id", sa.Text), sa.Column("failed_at", stamp)
    )
    sa.Index("failure_events_asset_time", events.c.asset_id, events.c.failed_at)

    def stamp_of(moment: datetime) -> datetime:
        return moment if zoned else moment.replace(tzinfo=None)

    rows: list[dict[str, Any]] = [
        {"ts": T0 + timedelta(hours=h), "asset": a, "temp": float(h)}
        for h in range(HOURS)
        for a in ("A", "B")
    ]
    failures = [{"asset_id": a, "failed_at": stamp_of(t)} for a, ts in FAILURES.items() for t in ts]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(readings.insert(), [{**r, "ts": stamp_of(r["ts"])} for r in rows])
        conn.execute(events.insert(), failures)
    engine.dispose()
    return expected_labels(rows)


def expected_labels(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The labels worked out reading by reading, as the requirement states them."""
    kept = []
    for r in rows:
        fails = FAILURES[r["asset"]]
        if any(r["ts"] - timedelta(hours=24) <= t <= r["ts"] for t in fails):
            continue
        positive = any(r["ts"] < t <= r["ts"] + timedelta(hours=48) for t in fails)
        kept.append(
            {"timestamp": r["ts"], "asset_id": r["asset"], EVENT_LABEL_COLUMN: int(positive)}
        )
    return pd.DataFrame(kept)


def extracted(result: Any) -> pd.DataFrame:
    parts = [pq.read_table(p).to_pandas() for p in (result.train_path, result.holdout_path)]
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(["timestamp", "asset_id"], ignore_index=True)


def test_labels_are_parsed_and_round_trip_through_the_public_config() -> None:
    org = parse_org_config(org_doc(), "acme")
    labels = org.schema_config.labels
    assert (
        labels is not None
        and labels.horizon_hours == 48.0
        and labels.events_table == "failure_events"
    )
    again = parse_org_config(
        {**org.public_dict(), "scadaDbConfig": {"url": "sqlite:///x.db"}}, "acme"
    )
    assert again.schema_config.labels == labels


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"horizonHours": 0}, "schemaConfig.labels.horizonHours", "greater than 0"),
        ({"horizonHours": "48"}, "schemaConfig.labels.horizonHours", "must be a number"),
        ({"excludeAfterHours": -1}, "schemaConfig.labels.excludeAfterHours", "at least 0"),
        ({"eventsTable": ""}, "schemaConfig.labels.eventsTable", "non-empty string"),
        ({"horizon": 48}, "schemaConfig.labels.horizon", "horizonHours"),
    ],
)
def test_bad_labels_name_the_field_and_what_is_allowed(
    change: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        labelled_schema(**change)
    assert err.value.field == field and words in str(err.value)


def test_a_missing_label_key_lists_the_keys_needed() -> None:
    labels = {k: v for k, v in LABELS.items() if k != "timestampColumn"}
    with pytest.raises(ConfigError) as err:
        parse_org_config(org_doc(labels=labels), "acme")
    assert err.value.field == "schemaConfig.labels.timestampColumn"
    assert "excludeAfterHours" in str(err.value)


def test_labels_need_the_readings_asset_column() -> None:
    doc = org_doc()
    del doc["schemaConfig"]["assetColumn"]
    with pytest.raises(ConfigError) as err:
        parse_org_config(doc, "acme")
    assert err.value.field == "schemaConfig.assetColumn"


def test_labels_and_an_org_target_column_are_refused_together() -> None:
    doc = org_doc()
    doc["mlModelConfig"]["targetColumn"] = "failure"
    with pytest.raises(ConfigError) as err:
        parse_org_config(doc, "acme")
    assert err.value.field == "mlModelConfig.targetColumn" and "schemaConfig.labels" in str(
        err.value
    )


def test_a_request_naming_a_target_is_refused_when_events_label_the_rows() -> None:
    org = parse_org_config(org_doc(), "acme")
    request = {
        "dataRange": {"startDate": "2024-03-01T00:00:00Z", "endDate": "2024-03-11T00:00:00Z"}
    }
    config = org.training_config(request, T0)
    assert config.target_column == EVENT_LABEL_COLUMN
    assert (
        config.label_horizon_s
        == config.purge_gap_s
        == org.schema_config.labels.horizon_hours * 3600
    )
    with pytest.raises(ConfigError) as err:
        org.training_config({**request, "targetColumn": "failure"}, T0)
    assert err.value.field == "targetColumn" and "schemaConfig.labels" in str(err.value)


def test_sqlite_rows_are_labelled_by_failures_ahead_and_left_out_after_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    expected = write_source(url)
    result = extract(url, labelled_schema(), labelled_config(), tmp_path / "out", batch_rows=50)
    got = extracted(result)
    assert list(got.columns) == ["timestamp", "asset_id", "temp", EVENT_LABEL_COLUMN]
    assert got[["timestamp", "asset_id", EVENT_LABEL_COLUMN]].equals(
        expected.astype({EVENT_LABEL_COLUMN: "int8"})
    )
    assert result.positives_train + result.positives_holdout == expected[EVENT_LABEL_COLUMN].sum()


def test_the_window_edges_are_as_documented(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    got = extracted(extract(url, labelled_schema(), labelled_config(), tmp_path / "out"))
    a = got[got.asset_id == "A"].set_index("timestamp")[EVENT_LABEL_COLUMN]
    failure = FAILURES["A"][0]
    assert a[failure - timedelta(hours=48)] == 1  # the failure is exactly horizonHours ahead
    assert failure - timedelta(hours=49) in a.index and a[failure - timedelta(hours=49)] == 0
    assert a[failure - timedelta(hours=1)] == 1
    left_out = [failure + timedelta(hours=h) for h in range(25)]  # at the failure up to 24 h on
    assert not set(left_out) & set(a.index)
    assert a[failure + timedelta(hours=25)] == 0


def test_a_missing_events_table_or_column_names_the_field(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    out = tmp_path / "out"
    with pytest.raises(
        ExtractError, match=r"schemaConfig\.labels\.eventsTable 'failures'.*'failure_events'"
    ):
        extract(url, labelled_schema(eventsTable="failures"), labelled_config(), out)
    with pytest.raises(
        ExtractError, match=r"schemaConfig\.labels\.timestampColumn names column 'failed'"
    ):
        extract(url, labelled_schema(timestampColumn="failed"), labelled_config(), out)


def test_an_events_table_name_carrying_sql_is_quoted_not_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    with pytest.raises(ExtractError, match="does not exist"):
        extract(
            url,
            labelled_schema(eventsTable='x"; DROP TABLE readings; --'),
            labelled_config(),
            tmp_path / "o",
        )
    assert sa.inspect(sa.create_engine(url)).has_table("readings")
