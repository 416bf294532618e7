"""A run that would not fit on disk is refused before anything is written; scratch is tidied."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from tests.support.registry_fixtures import NOW, ORG_DOC, migrated_engine
from training_tasks.config.settings import Settings
from training_tasks.errors import InsufficientDisk
from training_tasks.pipeline import scratch
from training_tasks.pipeline.disk import check_free_space
from training_tasks.protocol.paths import ModelStore
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService

ORG = {**ORG_DOC, "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"}}


def service(tmp_path: Path, sqlite_url: str, **env: str) -> TrainingService:
    base = tmp_path / "ml"
    base.mkdir(exist_ok=True)
    settings = Settings.from_env({"ML_BASE_PATH": str(base), **env})
    engine = migrated_engine(sqlite_url)
    rt = Runtime(settings, engine, fakeredis.FakeRedis(), ModelStore(base), now=lambda: NOW)
    svc = TrainingService(rt)
    svc.register_organization("acme", ORG)
    return svc


def test_a_run_that_would_not_fit_is_refused_with_the_numbers_and_nothing_is_recorded(
    tmp_path: Path, sqlite_url: str
) -> None:
    svc = service(tmp_path, sqlite_url, MIN_FREE_DISK_MB="1e12")
    with pytest.raises(InsufficientDisk) as err:
        svc.train_model("acme", wait=False)
    message = str(err.value)
    assert "MB free" in message and "MIN_FREE_DISK_MB" in message and "trainctl gc" in message
    assert str(tmp_path / "ml") in message
    assert svc.get_training_history("acme") == []


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path: Path) -> None:
    check_free_space(tmp_path / "not" / "yet", 1.0, org_id="acme", min_free_mb=1.0)
    with pytest.raises(InsufficientDisk, match="acme"):
        check_free_space(tmp_path / "not" / "yet", 1e12, org_id="acme", min_free_mb=1.0)


def _run_with_data(store: ModelStore, **config: object) -> dict[str, object]:
    version = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
    data = store.data_dir("acme", version)
    data.mkdir(parents=True)
    (data / "train.parquet").write_bytes(b"x" * 1000)
    (data / "holdout.parquet").write_bytes(b"y" * 100)
    return {
        "id": "r1",
        "organization_id": "acme",
        "version": version,
        "config": config,
        "data_stats": {
            "train_path": str(data / "train.parquet"),
            "holdout_path": str(data / "holdout.parquet"),
        },
    }


def test_a_successful_run_removes_its_training_split_and_keeps_the_holdout(
    tmp_path: Path, sqlite_url: str
) -> None:
    svc = service(tmp_path, sqlite_url)
    run = _run_with_data(svc.rt.store)
    assert scratch.clean_after_success(svc.rt, run) == 1000
    stats = run["data_stats"]
    assert not Path(stats["train_path"]).exists() and Path(stats["holdout_path"]).exists()  # type: ignore[index]


def test_keep_scratch_keeps_the_training_split(tmp_path: Path, sqlite_url: str) -> None:
    svc = service(tmp_path, sqlite_url)
    run = _run_with_data(svc.rt.store, keepScratch=True)
    assert scratch.clean_after_success(svc.rt, run) == 0
    assert Path(run["data_stats"]["train_path"]).exists()  # type: ignore[index]


def test_scratch_cleaning_never_deletes_outside_the_runs_data_folder(
    tmp_path: Path, sqlite_url: str
) -> None:
    svc = service(tmp_path, sqlite_url)
    run = _run_with_data(svc.rt.store)
    outside = tmp_path / "precious.parquet"
    outside.write_bytes(b"keep me")
    run["data_stats"] = {"train_path": str(outside)}
    assert scratch.clean_after_success(svc.rt, run) == 0 and outside.exists()


def test_a_trigger_that_is_not_a_short_name_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    from training_tasks.errors import ConfigError

    svc = service(tmp_path, sqlite_url)
    with pytest.raises(ConfigError, match="trigger"):
        svc.train_model("acme", wait=False, trigger="x" * 40)
    assert svc.get_training_history("acme") == []
