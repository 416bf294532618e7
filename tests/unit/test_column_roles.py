"""A column is the target or a feature, never both, whatever names refer to it.

The target given by the table's real column name while a feature's logical name maps to that
same column would train on the answer (the model scores 1.0 and is deployed). It is refused at
submit, with no run created, over the Python API and the CLI; the organization's own defaults
cannot be stored that way; and extract refuses it if the mappings changed after a run was queued.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.test_cli import one_error_line, trainctl
from training_tasks.config.org import SchemaConfig
from training_tasks.config.settings import Settings
from training_tasks.config.training import TrainingConfig
from training_tasks.errors import ConfigError, ExtractError
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService
from training_tasks.stages.extract.stage import extract

MAPPINGS = {"fail_flag": "failure", "temperature": "temp_c"}
ORG = {
    "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
    "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL_NOT_SET_HERE"},
    "schemaConfig": {
        "table": "sensor_readings",
        "timestampColumn": "ts",
        "columnMappings": MAPPINGS,
    },
}
CLASH = {"featureColumns": ["temperature", "fail_flag"]}
NAMED = (
    "targetColumn 'failure' and featureColumns[1] 'fail_flag' are the same SCADA column "
    "'failure' (schemaConfig.columnMappings maps 'fail_flag' to 'failure')"
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TrainingService]:
    env = {
        "ML_BASE_PATH": str(tmp_path / "ml"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'ml' / 'training.db'}",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: a refused request sends nothing
    }
    svc = TrainingService(build_runtime(Settings.from_env(env)))
    yield svc
    svc.close()


def test_the_api_refuses_a_feature_that_is_the_target_by_another_name_and_creates_no_run(
    service: TrainingService,
) -> None:
    service.register_organization("acme", ORG)
    with pytest.raises(ConfigError) as err:
        service.train_model("acme", CLASH, wait=False)
    assert err.value.field == "featureColumns"
    assert NAMED in str(err.value)
    assert service.get_training_history("acme") == []


def test_the_api_refuses_the_target_named_by_a_logical_name_of_a_feature_column(
    service: TrainingService,
) -> None:
    service.register_organization("acme", ORG)
    with pytest.raises(ConfigError) as err:
        service.train_model("acme", {"targetColumn": "fail_flag", "featureColumns": ["failure"]})
    assert "targetColumn 'fail_flag' and featureColumns[0] 'failure'" in str(err.value)
    assert service.get_training_history("acme") == []


def test_an_org_whose_defaults_or_mappings_make_the_target_a_feature_is_not_stored(
    service: TrainingService,
) -> None:
    clashing = {**ORG, "mlModelConfig": {**ORG["mlModelConfig"], **CLASH}}
    with pytest.raises(ConfigError, match=r"mlModelConfig\.featureColumns"):
        service.register_organization("acme", clashing)
    assert service.list_organizations() == []
    service.register_organization("acme", ORG)
    remapped = {
        **ORG,
        "schemaConfig": {**ORG["schemaConfig"], "columnMappings": {"temperature": "failure"}},
    }
    with pytest.raises(ConfigError, match="same SCADA column 'failure'"):
        service.update_organization("acme", remapped)
    assert service.get_organization("acme")["schemaConfig"]["columnMappings"] == MAPPINGS


def test_the_cli_refuses_it_in_one_line_and_creates_no_run(tmp_path: Path) -> None:
    org, request = tmp_path / "org.json", tmp_path / "request.json"
    org.write_text(json.dumps({**ORG, "mlModelConfig": {**ORG["mlModelConfig"], **CLASH}}))
    refused = one_error_line(trainctl(tmp_path, "org", "create", "acme", "--config", str(org)), 1)
    assert refused.startswith(
        "error: mlModelConfig.featureColumns: mlModelConfig.targetColumn 'failure' and "
        "mlModelConfig.featureColumns[1] 'fail_flag' are the same SCADA column 'failure'"
    )
    assert trainctl(tmp_path, "org", "list").stdout.strip() == ""
    org.write_text(json.dumps(ORG))
    assert trainctl(tmp_path, "org", "create", "acme", "--config", str(org)).returncode == 0
    request.write_text(json.dumps(CLASH))
    line = one_error_line(trainctl(tmp_path, "train", "acme", "--config", str(request)), 1)
    assert line.startswith(f"error: featureColumns: {NAMED}")
    assert "a column is either the target or a feature, never both" in line
    history = trainctl(tmp_path, "history", "acme", "--json")
    assert json.loads(history.stdout) == []


def test_extract_refuses_it_when_the_mappings_changed_after_the_run_was_queued(
    tmp_path: Path,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    path = tmp_path / "scada.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sensor_readings (ts DATETIME, temp_c FLOAT, failure INTEGER)")
        rows = [(str(start + timedelta(hours=i)), 20.0 + i, i % 2) for i in range(48)]
        conn.executemany("INSERT INTO sensor_readings VALUES (?, ?, ?)", rows)
    config = TrainingConfig(
        organization_id="acme",
        start=start,
        end=start + timedelta(days=2),
        hyperparameters={},
        validation_split=0.2,
        target_column="failure",
        feature_columns=("temperature", "fail_flag"),
    )
    schema = SchemaConfig("sensor_readings", "ts", column_mappings=MAPPINGS)
    out = tmp_path / "out"
    with pytest.raises(ExtractError) as err:
        extract(f"sqlite:///{path}", schema, config, out)
    assert f"organization acme: {NAMED}" in str(err.value)
    assert not out.exists()
