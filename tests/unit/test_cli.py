"""`trainctl` as a user meets it: help that explains, errors that name what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
    from tests.support.registry_fixtures import migrated_engine, register

    engine = migrated_engine(f"sqlite:///{tmp_path / 'ml' / 'training.db'}")
    register(engine, org_id, doc or {**BASE_ORG, "scadaDbConfig": {"url": "sqlite:///x.db"}})
    return engine


def _version(engine: Any, tmp_path: Path, org_id: str, offset_s: int, **run: Any) -> str:
    """A validated version with its model file, from a finished run (with `run` columns set)."""
    from datetime import timedelta

    from sqlalchemy import update

    from tests.support.registry_fixtures import NOW, record_model
    from training_tasks.db.tables import training_runs
    from training_tasks.protocol.ids import new_run_id, new_version_id
    from training_tasks.protocol.paths import ModelStore
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
    assert "is not a version of organization acme-corp" in result.stderr
    assert "trainctl versions acme-corp" in result.stderr


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
    from tests.support import onnx_fixtures as fx

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


# Expected failures: one `error:` line naming the problem and what to do, never a traceback.

NESTED = 100_000
UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
DEFAULT_NOTE = "using the default database sqlite:///"


def one_error_line(result: subprocess.CompletedProcess[str] | tuple[int, str], code: int) -> str:
    """The single `error:` line a failed command printed, after checking its exit status."""
    returncode, stderr = (
        (result.returncode, result.stderr)
        if isinstance(result, subprocess.CompletedProcess)
        else result
    )
    assert "Traceback" not in stderr, stderr
    # On the default database (no DATABASE_URL) a command first says which file it uses.
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(DEFAULT_NOTE)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert returncode == code, stderr
    return lines[0]


def in_process(capsys: Any, *args: str) -> tuple[int, str]:
    """Run `trainctl ARGS` in this process (for checks made before any service is touched)."""
    from training_tasks.cli.common import run_cli
    from training_tasks.cli.main import cli

    code = run_cli(cli, list(args))
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


@pytest.mark.parametrize(
    "command",
    [("org", "list"), ("status", "acme-corp"), ("history", "acme-corp"), ("train", "acme-corp")],
)
def test_an_unreachable_service_database_is_one_line_naming_database_url(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = trainctl(tmp_path, *command, DATABASE_URL=UNREACHABLE_POSTGRES)
    line = one_error_line(result, 1)
    assert f"the service database {UNREACHABLE_POSTGRES} (DATABASE_URL) cannot be reached" in line
    assert "Connection refused" in line and "then run the command again" in line


def test_an_unreachable_redis_is_one_line_naming_redis_url_when_the_command_needs_it(
    tmp_path: Path,
) -> None:
    from sqlalchemy import update

    from training_tasks.db.tables import organizations
    from training_tasks.protocol.paths import ModelStore

    engine = _registered(tmp_path, doc=BASE_ORG)  # its SCADA URL is not set here: not checked
    version = _version(engine, tmp_path, "acme-corp", 0)
    with engine.begin() as conn:  # deployed, so reconcile compares the Redis key with it
        conn.execute(update(organizations).values(current_version=version, deploy_sequence=1))
    engine.dispose()
    deployed = ModelStore(tmp_path / "ml").deployed_model("acme-corp", version)
    deployed.parent.mkdir(parents=True)
    deployed.write_bytes(b"model")
    line = one_error_line(trainctl(tmp_path, "reconcile", REDIS_URL=UNREACHABLE_REDIS), 1)
    assert f"Redis at {UNREACHABLE_REDIS} (REDIS_URL) did not answer" in line
    assert "Start Redis or point REDIS_URL at it" in line
    queued = one_error_line(
        trainctl(tmp_path, "train", "acme-corp", REDIS_URL=UNREACHABLE_REDIS), 1
    )
    assert "the broker did not take run" in queued and "REDIS_URL" in queued


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "a training config must be a JSON object {...}, got a list"),
        ('"acme"', "a training config must be a JSON object {...}, got a string"),
        ("[" * NESTED + "]" * NESTED, "must be a JSON object {...}, got a list"),
        (
            '{"featureColumns": ' + "[" * NESTED + "]" * NESTED + "}",
            "featureColumns[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nests lists or "
            "objects more than 16 levels deep",
        ),
        (
            '{"hyperparameters": {"metric": ' + '{"a": ' * NESTED + "1" + "}" * NESTED + "}}",
            "hyperparameters.metric.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nests lists or objects more",
        ),
        ('{"featureColumns": [', "is not valid JSON (Expecting value: line 1 column 21"),
        ('{"validationSplit": ' + "9" * 5000 + "}", "holds a number of over 4,300 digits"),
        (b'{"targetColumn": "\\xe9t\xe9"}', "is not UTF-8 text (byte 23 is not); save it as UTF-8"),
        ("", "must be a JSON object {...}, got an empty file"),
    ],
)
def test_a_training_config_file_that_is_not_a_usable_json_object_is_one_line_exit_2(
    tmp_path: Path, capsys: Any, content: str | bytes, expected: str
) -> None:
    config = _write(tmp_path / "config.json", content)
    line = one_error_line(in_process(capsys, "train", "acme-corp", "--config", str(config)), 2)
    assert line.startswith(f"error: --config {config}")
    assert expected in line
    assert len(line) < 400


def test_a_config_file_that_does_not_exist_or_is_not_a_file_is_one_line_exit_2(
    tmp_path: Path, capsys: Any
) -> None:
    missing = tmp_path / "nowhere.json"
    line = one_error_line(in_process(capsys, "org", "create", "acme", "--config", str(missing)), 2)
    assert line == (
        f"error: --config {missing}: no such file; give the path of a JSON file with an "
        "organization config"
    )
    line = one_error_line(in_process(capsys, "org", "update", "acme", "--config", str(tmp_path)), 2)
    assert "is not a regular file (a directory, pipe or device)" in line
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block for ever: it is refused unread
    line = one_error_line(in_process(capsys, "train", "acme", "--config", str(fifo)), 2)
    assert f"--config {fifo} is not a regular file" in line


def test_a_config_file_larger_than_a_mebibyte_is_refused_unread(
    tmp_path: Path, capsys: Any
) -> None:
    config = _write(tmp_path / "big.json", json.dumps({"featureColumns": ["x" * 2_000_000]}))
    line = one_error_line(in_process(capsys, "train", "acme", "--config", str(config)), 2)
    assert "is 2,000,024 bytes; a training config is at most 1,048,576 bytes of JSON" in line


def test_an_org_config_file_that_is_a_list_is_refused_and_registers_nothing(
    tmp_path: Path,
) -> None:
    config = _write(tmp_path / "org.json", json.dumps([BASE_ORG]))
    line = one_error_line(
        trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config)), 2
    )
    assert "an organization config must be a JSON object {...}, got a list" in line
    assert trainctl(tmp_path, "org", "list").stdout.strip() == ""


def test_a_huge_value_in_a_config_file_is_echoed_shortened(tmp_path: Path) -> None:
    _registered(tmp_path).dispose()
    config = _write(tmp_path / "config.json", json.dumps({"targetColumn": "f" * 500_000}))
    line = one_error_line(trainctl(tmp_path, "train", "acme-corp", "--config", str(config)), 1)
    assert line.startswith("error: targetColumn: must be at most 128 characters, got 'fff")
    assert line.endswith("… (500,000 characters)") and len(line) < 250


def test_a_huge_organization_id_is_echoed_shortened(tmp_path: Path) -> None:
    line = one_error_line(trainctl(tmp_path, "history", "a" * 10_000), 1)
    assert "… (10,000 characters) is not a valid organization id" in line and len(line) < 300


def test_a_usage_error_is_one_line_with_where_to_read_more(tmp_path: Path, capsys: Any) -> None:
    line = one_error_line(in_process(capsys, "gc", "--keep", "-1"), 2)
    assert "--keep" in line and line.endswith("(see `trainctl gc --help`)")


def test_another_organizations_version_is_refused_as_if_it_did_not_exist(tmp_path: Path) -> None:
    from tests.support.registry_fixtures import register

    engine = _registered(tmp_path)
    register(engine, "globex", {**BASE_ORG, "scadaDbConfig": {"url": "sqlite:///y.db"}})
    theirs = _version(engine, tmp_path, "globex", 0)
    engine.dispose()
    unknown = "v2026-01-15T10-30-00-000Z_a1b2c3d4"
    for command in ("deploy", "rollback"):
        refused = one_error_line(trainctl(tmp_path, command, "acme-corp", theirs), 1)
        assert "globex" not in refused
        assert f"version {theirs} is not a version of organization acme-corp" in refused
        missing = one_error_line(trainctl(tmp_path, command, "acme-corp", unknown), 1)
        assert refused.replace(theirs, unknown) == missing
