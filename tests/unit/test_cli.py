"""`trainctl` as a user meets it: help that explains, errors that name what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BASE_ORG = {
    "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
    "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


def trainctl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update(ML_BASE_PATH=str(tmp_path / "ml"), **env)
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_command_and_the_environment(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "--help")
    assert result.returncode == 0
    for word in (
        "org",
        "train",
        "status",
        "history",
        "versions",
        "deploy",
        "DATABASE_URL",
        "REDIS_URL",
    ):
        assert word in result.stdout


def test_a_bad_environment_variable_is_named_and_exits_2(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "status", "acme-corp", DATABASE_URL="mysql://u@h/db")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "postgresql" in result.stderr


def test_an_unknown_organization_says_how_to_register_it(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "history", "acme-corp")
    assert result.returncode == 1
    assert "trainctl org create acme-corp" in result.stderr


def test_a_bad_org_config_is_refused_naming_the_field_and_registers_nothing(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps({**BASE_ORG, "trainingSchedule": {"pattern": "whenever"}}))
    result = trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config))
    assert result.returncode == 1
    assert "trainingSchedule.pattern" in result.stderr
    assert trainctl(tmp_path, "org", "list").stdout.strip() == ""


def test_an_org_is_registered_and_shown_without_its_secret(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(
        json.dumps({**BASE_ORG, "scadaDbConfig": {"url": "postgresql://u:hunter2@h/db"}})
    )
    created = trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config))
    assert created.returncode == 0, created.stderr
    shown = trainctl(tmp_path, "org", "show", "acme-corp")
    assert json.loads(shown.stdout)["scadaDbConfig"]["url"] == "postgresql://u:***@h/db"
    assert "hunter2" not in shown.stdout
    assert trainctl(tmp_path, "org", "list").stdout.split() == ["acme-corp"]


def test_an_invalid_organization_id_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps(BASE_ORG))
    result = trainctl(tmp_path, "org", "create", "../x", "--config", str(config))
    assert result.returncode == 1
    assert "organizationId" in result.stderr


def _registered(tmp_path: Path, org_id: str = "acme-corp", doc: dict | None = None) -> Any:
    """The service database under tmp_path/ml with ORG_ID registered, as `trainctl` finds it."""
    from tests.registry_fixtures import migrated_engine, register

    engine = migrated_engine(f"sqlite:///{tmp_path / 'ml' / 'training.db'}")
    register(engine, org_id, doc or {**BASE_ORG, "scadaDbConfig": {"url": "sqlite:///x.db"}})
    return engine


def _version(engine: Any, tmp_path: Path, org_id: str, offset_s: int, **run: Any) -> str:
    """A validated version with its model file, from a finished run (with `run` columns set)."""
    from datetime import timedelta

    from sqlalchemy import update

    from tests.registry_fixtures import NOW, record_model
    from training_tasks.db.tables import training_runs
    from training_tasks.ids import new_run_id, new_version_id
    from training_tasks.paths import ModelStore
    from training_tasks.registry import runs

    now, store = NOW + timedelta(seconds=offset_s), ModelStore(tmp_path / "ml")
    run_id, version = new_run_id(), new_version_id(now)
    runs.create_run(
        engine,
        run_id=run_id,
        org_id=org_id,
        version=version,
        config=run.pop("config", {}),
        trigger="t",
        auto_deploy=True,
        actor="t",
        now=now,
    )
    with engine.begin() as conn:
        conn.execute(
            update(training_runs)
            .where(training_runs.c.id == run_id)
            .values(status="succeeded", **run)
        )
    record_model(engine, store, org_id, version, run_id, now=now, report={"passed": True})
    return version


def test_a_rollback_with_nothing_to_go_back_to_says_how_to_name_a_version(tmp_path: Path) -> None:
    _registered(tmp_path).dispose()
    result = trainctl(tmp_path, "rollback", "acme-corp")
    assert result.returncode == 1
    assert "acme-corp has no previous version" in result.stderr
    assert "trainctl rollback acme-corp VERSION" in result.stderr


def test_a_rollback_to_an_unknown_version_says_where_to_list_them(tmp_path: Path) -> None:
    _registered(tmp_path).dispose()
    result = trainctl(tmp_path, "rollback", "acme-corp", "v2026-01-15T10-30-00-000Z_a1b2c3d4")
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "trainctl versions" in result.stderr


def test_gc_dry_run_lists_what_would_be_removed_and_changes_nothing(tmp_path: Path) -> None:
    engine = _registered(tmp_path)
    old, older = (
        _version(engine, tmp_path, "acme-corp", -60),
        _version(engine, tmp_path, "acme-corp", -120),
    )
    newest = _version(engine, tmp_path, "acme-corp", 0)
    result = trainctl(tmp_path, "gc", "acme-corp", "--keep", "1", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[3] for line in lines if line.startswith("would remove")] == [older, old]
    assert f"models/acme-corp/model_{old}.onnx" in result.stdout
    assert "nothing changed" in result.stdout and newest not in result.stdout
    listed = json.loads(trainctl(tmp_path, "versions", "acme-corp", "--json").stdout)
    assert {v["status"] for v in listed} == {"validated"}
    assert (tmp_path / "ml" / "models" / "acme-corp" / f"model_{older}.onnx").exists()
    engine.dispose()


def test_gc_refuses_a_negative_keep(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "gc", "--keep", "-1")
    assert result.returncode == 2
    assert "--keep" in result.stderr


def test_validate_refuses_a_file_outside_the_organizations_folders(tmp_path: Path) -> None:
    _registered(tmp_path).dispose()
    stray = tmp_path / "model.onnx"
    stray.write_bytes(b"onnx")
    result = trainctl(tmp_path, "validate", "acme-corp", str(stray))
    assert result.returncode == 1
    assert "outside the folders of organization acme-corp" in result.stderr


def test_validate_without_a_holdout_says_to_train_first(tmp_path: Path) -> None:
    engine = _registered(tmp_path)
    version = _version(engine, tmp_path, "acme-corp", 0)
    engine.dispose()
    model = tmp_path / "ml" / "models" / "acme-corp" / f"model_{version}.onnx"
    result = trainctl(tmp_path, "validate", "acme-corp", str(model))
    assert result.returncode == 1
    assert "acme-corp has no holdout" in result.stderr
    assert "trainctl train acme-corp --wait" in result.stderr


def test_validate_prints_every_failed_check_and_exits_1_when_rejected(tmp_path: Path) -> None:
    from tests.unit import onnx_fixtures as fx

    org = fx.ORG_ID
    doc = {
        **BASE_ORG,
        "mlModelConfig": {"featureColumns": fx.FEATURES, "targetColumn": fx.TARGET},
        "scadaDbConfig": {"url": "sqlite:///x.db"},
    }
    engine = _registered(tmp_path, org, doc)
    holdout = fx.write_holdout(tmp_path / "holdout.parquet", *fx.make_data(1000, seed=2))
    wire = {
        "organizationId": org,
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-01T00:00:00Z"},
        "hyperparameters": {},
        "validationSplit": 0.2,
        "targetColumn": fx.TARGET,
        "featureColumns": fx.FEATURES,
    }
    version = _version(
        engine, tmp_path, org, 0, config=wire, data_stats={"holdout_path": str(holdout)}
    )
    engine.dispose()
    booster = fx.train_booster(*fx.make_data(1000, seed=3, informative=False))
    model = tmp_path / "ml" / "models" / org / f"model_{version}.onnx"
    model.write_bytes(fx.to_onnx(booster, org_id=org, version=version).SerializeToString())
    result = trainctl(tmp_path, "validate", org, str(model))
    assert result.returncode == 1, result.stderr
    assert f"{org} version {version}: rejected" in result.stdout
    assert f"model    {model}" in result.stdout
    assert "failed checks:" in result.stdout and "accuracy" in result.stdout
