"""Organization ids, version ids and environment settings are checked before any use."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError, SettingsError
from training_tasks.protocol.ids import check_org_id, new_version_id, org_queue
from training_tasks.protocol.paths import ModelStore


@pytest.mark.parametrize(
    "bad", ["../x", "Acme", "a/b", "", "-acme", "acme-", "a" * 64, "acme corp", None, 7]
)
def test_unsafe_organization_ids_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="organizationId"):
        check_org_id(bad)


def test_version_ids_have_the_contract_shape_and_sort_by_time() -> None:
    early = new_version_id(datetime(2024, 1, 15, 10, 30, 0, 123000, tzinfo=UTC))
    late = new_version_id(datetime(2024, 1, 15, 10, 30, 1, tzinfo=UTC))
    assert re.fullmatch(r"v2024-01-15T10-30-00-123Z_[0-9a-f]{8}", early)
    assert early < late


def test_an_org_queue_is_named_after_the_org() -> None:
    assert org_queue("acme-corp") == "org.acme-corp"


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version = "v2024-01-15T10-30-00-000Z_a1b2c3d4"
    assert store.version_model("acme", version) == tmp_path / f"models/acme/model_{version}.onnx"
    assert (
        store.deployed_model("acme", version)
        == tmp_path / f"models/acme/deployed_{version}/model.onnx"
    )
    assert store.current_link("acme") == tmp_path / "models/acme/current"
    assert store.artifacts("acme", version) == tmp_path / f"artifacts/acme/{version}"


def test_a_path_outside_the_org_folders_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "models/globex").mkdir(parents=True)
    with pytest.raises(ConfigError, match="outside"):
        store.check_inside_org("acme", tmp_path / "models/acme/../globex/model.onnx")


def test_settings_default_to_sqlite_under_ml_base_path(tmp_path: Path) -> None:
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'training.db'}"
    assert settings.redis_url.startswith("redis://127.0.0.1")
    assert not settings.debug


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"REDIS_URL": "http://127.0.0.1"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"PYTHON_ENV": "/nonexistent/python"}, "PYTHON_ENV"),
        ({"NODE_ENV": "staging"}, "NODE_ENV"),
        ({"TRAINING_TIMEOUT_S": "-5"}, "TRAINING_TIMEOUT_S"),
        ({"RUN_STALL_S": "0"}, "RUN_STALL_S"),
        ({"RUN_STALL_S": "five minutes"}, "RUN_STALL_S"),
    ],
)
def test_a_bad_environment_variable_is_named(env: dict, name: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert err.value.field == name


@pytest.mark.parametrize(
    ("name", "value", "unit"),
    [
        ("MIN_FREE_DISK_MB", "lots", "a number of megabytes (MB)"),
        ("RUN_STALL_S", "five minutes", "a number of seconds"),
        ("TRAINING_TIMEOUT_S", "inf", "a number of seconds"),
    ],
)
def test_a_variable_that_is_not_a_number_is_named_with_its_unit(
    name: str, value: str, unit: str
) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert err.value.field == name
    assert err.value.problem == f"{value!r} is not {unit}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRAINING_TIMEOUT_S", "abc"),
        ("BROKER_VISIBILITY_TIMEOUT_S", "-1"),
        ("BEAT_MAX_INTERVAL_S", "soon"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
def test_celeryconfig_alone_refuses_a_bad_variable_naming_it(name: str, value: str) -> None:
    # A fresh interpreter with nothing else set, so only celeryconfig reads the environment.
    done = subprocess.run(
        [sys.executable, "-c", "import celeryconfig"],
        env={"PATH": os.defpath, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"SettingsError: {name}: " in done.stderr


def test_a_plain_postgresql_url_gets_the_psycopg_driver() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://postgres@127.0.0.1/test"})
    assert settings.database_url.startswith("postgresql+psycopg://")
