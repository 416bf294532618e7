"""The purge gap of a single-reading extract: no training row's label reaches the holdout."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.unit.test_event_labels import HOURS, T0, org_doc, write_source
from training_tasks.config.org import parse_org_config
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ExtractError
from training_tasks.stages.extract.stage import extract

NOW = datetime(2024, 4, 1, tzinfo=UTC)


def labelled(end: datetime = T0 + timedelta(hours=HOURS), split: float = 0.2) -> TrainingConfig:
    org = parse_org_config(org_doc(), "acme")
    request = {
        "dataRange": {"startDate": T0.isoformat(), "endDate": end.isoformat()},
        "validationSplit": split,
    }
    return org.training_config(request, NOW)


def test_training_rows_end_a_horizon_before_the_holdout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    org = parse_org_config(org_doc(), "acme")
    config = labelled()
    assert config.purge_gap_s == 48 * 3600
    result = extract(url, org.schema_config, config, tmp_path / "out")
    split_at = T0 + timedelta(hours=HOURS * 0.8)
    train = pq.read_table(result.train_path).to_pandas()
    holdout = pq.read_table(result.holdout_path).to_pandas()
    assert train.timestamp.max() == split_at - timedelta(hours=49)  # hourly rows
    assert holdout.timestamp.min() == split_at
    assert result.purge_gap_s == 48 * 3600 and not result.window
    assert result.rows_train == len(train) and result.rows_holdout == len(holdout)
    # The readings of the gap are read (and counted) but written to neither file.
    assert result.readings is not None and result.readings > len(train) + len(holdout)
    assert result.events_path is not None and result.events_path.is_file()


def test_without_labels_or_windows_nothing_is_purged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    schema = parse_org_config(org_doc(), "acme").schema_config
    config = labelled()
    plain = replace(config, purge_gap_s=0.0, label_horizon_s=None)
    result = extract(url, schema, plain, tmp_path / "out")
    assert result.purge_gap_s == 0.0
    assert result.readings == result.rows_train + result.rows_holdout


def test_a_range_the_gap_swallows_is_refused_with_the_numbers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scada.db'}"
    write_source(url)
    schema = parse_org_config(org_doc(), "acme").schema_config
    config = labelled(end=T0 + timedelta(hours=72), split=0.5)
    with pytest.raises(ExtractError) as err:
        extract(url, schema, config, tmp_path / "out")
    message = str(err.value)
    for words in (
        "organization acme",
        "dataRange 2024-03-01T00:00:00Z to 2024-03-04T00:00:00Z (72 h)",
        "validationSplit 0.5",
        "holdout at 2024-03-02T12:00:00Z (36 h of holdout)",
        "purge gap before it is 48 h (schemaConfig.labels.horizonHours 48)",
        "must end before 2024-02-29T12:00:00Z",
        "lower validationSplit",
    ):
        assert words in message
    assert not (tmp_path / "out").exists()
