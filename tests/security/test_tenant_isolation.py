"""Attacks across tenants, each with its expected outcome: refused, naming why, nothing changed.

Two organizations share one database and one model store; acme tries to reach globex.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from tests.support.registry_fixtures import (
    NOW,
    ORG_DOC,
    finished_run,
    migrated_engine,
    record_model,
    register,
)
from training_tasks.config.org import parse_org_config
from training_tasks.config.settings import Settings
from training_tasks.config.training import resolve
from training_tasks.errors import ConfigError, ExtractError, NotFoundError, TrainingServiceError
from training_tasks.protocol.paths import ModelStore
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService
from training_tasks.stages.extract.source import plan_source

PASSED = {"passed": True, "failures": [], "metrics": {}}


@pytest.fixture
def svc(tmp_path: Path, sqlite_url: str) -> Iterator[TrainingService]:
    base = tmp_path / "ml"
    settings = Settings.from_env({"ML_BASE_PATH": str(base)})
    engine = migrated_engine(sqlite_url)
    for org in ("acme", "globex"):
        register(engine, org)
    rt = Runtime(settings, engine, fakeredis.FakeRedis(), ModelStore(base), now=lambda: NOW)
    yield TrainingService(rt)
    engine.dispose()


def version_of(svc: TrainingService, org: str, offset_s: int = 0) -> tuple[str, Path]:
    """A validated version of `org` with its model file."""
    run_id, version = finished_run(svc.rt.engine, org, NOW.replace(second=offset_s))
    path = record_model(svc.rt.engine, svc.rt.store, org, version, run_id, now=NOW, report=PASSED)
    return version, path


def deployed(svc: TrainingService, org: str) -> str | None:
    return svc.get_organization(org)["deployedVersion"]


def test_deploying_another_organizations_version_is_refused(svc: TrainingService) -> None:
    theirs, _ = version_of(svc, "globex")
    with pytest.raises(TrainingServiceError, match=theirs):
        svc.deploy_model("acme", theirs)
    assert deployed(svc, "acme") is None and deployed(svc, "globex") is None


def test_deploying_another_organizations_model_file_is_refused(svc: TrainingService) -> None:
    ours, _ = version_of(svc, "acme")
    _, their_file = version_of(svc, "globex", offset_s=1)
    with pytest.raises(ConfigError, match="outside the folders of organization acme"):
        svc.deploy_model("acme", ours, model_path=their_file)
    assert deployed(svc, "acme") is None


def test_a_path_that_climbs_out_of_the_organization_is_refused(svc: TrainingService) -> None:
    ours, _ = version_of(svc, "acme")
    climbing = svc.rt.store.org_models("acme") / ".." / "globex" / "x.onnx"
    with pytest.raises(ConfigError, match="outside the folders"):
        svc.deploy_model("acme", ours, model_path=climbing)


def test_a_symlink_in_our_folder_to_their_model_is_refused(svc: TrainingService) -> None:
    ours, _ = version_of(svc, "acme")
    _, their_file = version_of(svc, "globex", offset_s=1)
    link = svc.rt.store.org_models("acme") / "borrowed.onnx"
    link.symlink_to(their_file)
    with pytest.raises(ConfigError, match="outside the folders"):
        svc.deploy_model("acme", ours, model_path=link)
    with pytest.raises(ConfigError, match="outside the folders"):
        svc.validate_model("acme", link)


def test_rolling_back_to_another_organizations_version_is_refused(svc: TrainingService) -> None:
    ours, _ = version_of(svc, "acme")
    theirs, _ = version_of(svc, "globex", offset_s=1)
    svc.deploy_model("acme", ours)
    with pytest.raises(TrainingServiceError, match=theirs):
        svc.rollback_model("acme", theirs)
    assert deployed(svc, "acme") == ours


def test_another_organizations_runs_versions_and_audit_are_not_listed(svc: TrainingService) -> None:
    theirs, _ = version_of(svc, "globex")
    assert svc.list_versions("acme") == [] and svc.get_training_history("acme") == []
    assert all(e["organizationId"] == "acme" for e in svc.get_audit_trail("acme"))
    assert theirs in {v["version"] for v in svc.list_versions("globex")}


@pytest.mark.parametrize("org_id", ["../globex", "globex/..", "acme\n", "ACME", "acme;globex", ""])
def test_an_organization_id_that_is_not_an_id_is_refused_everywhere(
    svc: TrainingService, org_id: str
) -> None:
    for call in (
        lambda: svc.get_organization(org_id),
        lambda: svc.get_training_history(org_id),
        lambda: svc.list_versions(org_id),
        lambda: svc.rollback_model(org_id),
        lambda: svc.cancel_training(org_id),
        lambda: svc.schedule_training(org_id, {"pattern": "0 2 * * 0"}),
        lambda: svc.train_model(org_id, wait=False),
    ):
        with pytest.raises(ConfigError, match="organizationId"):
            call()


def test_an_unknown_organization_is_not_found_not_created(svc: TrainingService) -> None:
    with pytest.raises(NotFoundError, match="trainctl org create initech"):
        svc.train_model("initech", wait=False)
    assert "initech" not in svc.list_organizations()


@pytest.fixture
def scada(tmp_path: Path) -> str:
    path = tmp_path / "scada.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sensor_readings (ts TEXT, temperature REAL, failure INTEGER)")
        conn.execute("CREATE TABLE secrets (token TEXT)")
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("table", "sensor_readings; DROP TABLE secrets"),
        ("table", "secrets"),
        ("timestampColumn", 'ts" FROM secrets --'),
        ("columnMappings", "(SELECT token FROM secrets)"),
        ("columnMappings", "temperature, token"),
    ],
)
def test_table_and_column_names_must_exist_in_the_real_schema(
    scada: str, where: str, name: str
) -> None:
    doc = {
        **ORG_DOC,
        "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
        "scadaDbConfig": {"url": scada},
        "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
    }
    if where == "columnMappings":
        doc["schemaConfig"]["columnMappings"] = {"temperature": name}
    else:
        doc["schemaConfig"][where] = name
    org = parse_org_config(doc, "acme")
    config = resolve({}, "acme", org.ml_model_config, NOW)
    with pytest.raises(ExtractError) as err:
        plan_source(scada, org.schema_config, config, connect_timeout_s=2)
    assert "does not" in str(err.value) and "schemaConfig" in str(err.value)
    with sqlite3.connect(scada.removeprefix("sqlite:///")) as conn:  # nothing was dropped
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='secrets'").fetchone()
