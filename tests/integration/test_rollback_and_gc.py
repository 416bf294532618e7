"""Rollbacks, deploys of a named file, validating any model file and removing old versions.

On a real Redis and on SQLite, plus PostgreSQL where two deployers race each other.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine, func, select, update

from tests.support import onnx_fixtures as fx
from tests.support.registry_fixtures import NOW, ORG_DOC, migrated_engine, record_model, register
from training_tasks.config.settings import Settings
from training_tasks.db.engine import make_engine
from training_tasks.db.tables import audit_events, model_versions, training_runs
from training_tasks.errors import ConfigError, ConflictError, DeployError, NotFoundError
from training_tasks.files import sha256_file
from training_tasks.protocol import hotswap
from training_tasks.protocol.ids import new_run_id, new_version_id
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import audit, orgs, runs, versions
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService
from training_tasks.stages import deploy as deploy_stage

pytestmark = pytest.mark.integration

PLANT_DOC: dict[str, Any] = {
    **ORG_DOC,
    "mlModelConfig": {"featureColumns": fx.FEATURES, "targetColumn": fx.TARGET},
}


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = migrated_engine(sqlite_url)
    for org in ("acme", "globex"):
        register(engine, org)
    register(engine, fx.ORG_ID, PLANT_DOC)
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "ml")


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def service(engine, redis, store, sqlite_url: str, redis_url: str) -> TrainingService:
    env = {"ML_BASE_PATH": str(store.base), "DATABASE_URL": sqlite_url, "REDIS_URL": redis_url}
    return TrainingService(Runtime(Settings.from_env(env), engine, redis, store, lambda: NOW))


def trained(
    engine: Engine,
    store: ModelStore,
    org: str,
    *,
    offset_s: int = 0,
    verdict: str | None = "passed",
    active: bool = False,
) -> str:
    """A recorded version with its model file; `verdict` None leaves it unvalidated."""
    now = NOW + timedelta(seconds=offset_s)
    run_id, version = new_run_id(), new_version_id(now)
    wire = {
        "organizationId": org,
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-01T00:00:00Z"},
        "hyperparameters": {},
        "validationSplit": 0.2,
        "targetColumn": fx.TARGET,
        "featureColumns": fx.FEATURES,
    }
    runs.create_run(
        engine,
        run_id=run_id,
        org_id=org,
        version=version,
        config=wire,
        trigger="t",
        auto_deploy=True,
        actor="t",
        now=now,
    )
    if not active:
        status = "succeeded" if verdict == "passed" else "failed"
        with engine.begin() as conn:
            conn.execute(
                update(training_runs).where(training_runs.c.id == run_id).values(status=status)
            )
    store.data_dir(org, version).mkdir(parents=True, exist_ok=True)
    store.artifacts(org, version).mkdir(parents=True, exist_ok=True)
    (store.artifacts(org, version) / "metrics.json").write_text("{}")
    record_model(engine, store, org, version, run_id, now=now)
    if verdict is not None:
        passed = verdict == "passed"
        report = {"passed": passed, "failures": [] if passed else ["recall is 0.41, below 0.7"]}
        versions.record_validation(
            engine, version, report=report, passed=passed, actor="t", now=now
        )
    return version


def state(engine: Engine, store: ModelStore, redis: Any, org: str = "acme") -> tuple:
    """Everything a deployment moves: database pointer and sequence, symlink, Redis key."""
    row = orgs.get_org_row(engine, org)
    link = store.current_link(org)
    stored = hotswap.read_current(redis, org)
    return (
        row["current_version"],
        row["previous_version"],
        row["deploy_sequence"],
        os.readlink(link) if link.is_symlink() else None,
        None if stored is None else (stored.version, stored.sequence),
    )


def deploy(engine: Engine, redis: Any, store: ModelStore, version: str, org: str = "acme") -> None:
    deploy_stage.deploy(engine, redis, store, org, version, now=NOW, actor="t")


def status_of(engine: Engine, version: str) -> str:
    return versions.get_version(engine, version)["status"]


# Rollback


def test_a_rollback_deploys_the_previous_version_again_and_announces_it(
    engine, store, redis, service
) -> None:
    first = trained(engine, store, "acme")
    second = trained(engine, store, "acme", offset_s=60)
    deploy(engine, redis, store, first)
    deploy(engine, redis, store, second)
    pubsub = redis.pubsub()
    pubsub.subscribe(hotswap.channel("acme"))
    pubsub.get_message(timeout=1)

    result = service.rollback_model("acme")

    assert result["version"] == first and result["sequence"] == 3
    assert state(engine, store, redis) == (first, second, 3, f"deployed_{first}", (first, 3))
    event, announced = hotswap.parse(pubsub.get_message(timeout=1)["data"])
    assert (event, announced.version, announced.sequence) == ("rolled_back", first, 3)
    assert announced.sha256 == sha256_file(store.deployed_model("acme", first))
    assert (status_of(engine, first), status_of(engine, second)) == ("deployed", "superseded")
    [rolled] = [e for e in audit.list_events(engine, "acme") if e["event"] == "model.rolled_back"]
    assert rolled["details"] == {"version": first, "previous": second, "sequence": 3}


def test_a_rollback_to_a_named_version_skips_over_the_previous_one(
    engine, store, redis, service
) -> None:
    names = [trained(engine, store, "acme", offset_s=60 * i) for i in range(3)]
    for version in names:
        deploy(engine, redis, store, version)
    service.rollback_model("acme", names[0])
    assert state(engine, store, redis) == (
        names[0],
        names[2],
        4,
        f"deployed_{names[0]}",
        (names[0], 4),
    )


def test_a_rollback_rewrites_a_deployed_copy_that_went_missing(
    engine, store, redis, service
) -> None:
    first = trained(engine, store, "acme")
    deploy(engine, redis, store, first)
    deploy(engine, redis, store, trained(engine, store, "acme", offset_s=60))
    store.deployed_model("acme", first).unlink()
    service.rollback_model("acme")
    assert (
        sha256_file(store.deployed_model("acme", first))
        == versions.get_version(engine, first)["sha256"]
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("rejected", "is rejected (it failed validation: recall is 0.41"),
        ("another organization", "is not a version of organization acme; nothing was"),
        ("removed by gc", "garbage collection removed its files"),
        ("already deployed", "is already the deployed version of organization acme"),
        ("never validated", "is trained; only a validated version can be rolled back to"),
    ],
)
def test_a_refused_rollback_names_the_reason_and_changes_nothing(
    engine, store, redis, service, case: str, message: str
) -> None:
    target = {
        "rejected": lambda: trained(engine, store, "acme", offset_s=10, verdict="rejected"),
        "another organization": lambda: trained(engine, store, "globex", offset_s=10),
        "removed by gc": lambda: trained(engine, store, "acme", offset_s=10),
        "never validated": lambda: trained(engine, store, "acme", offset_s=10, verdict=None),
    }.get(case, lambda: None)()
    deploy(engine, redis, store, trained(engine, store, "acme"))
    current = trained(engine, store, "acme", offset_s=60)
    deploy(engine, redis, store, current)
    if case == "removed by gc":
        assert [r["version"] for r in service.collect_garbage("acme", keep=0)] == [target]
    target = current if case == "already deployed" else target
    before, events = state(engine, store, redis), len(audit.list_events(engine, "acme"))
    with pytest.raises(DeployError, match=re.escape(message)):
        service.rollback_model("acme", target)
    assert state(engine, store, redis) == before
    assert len(audit.list_events(engine, "acme")) == events


def test_an_organization_with_nothing_to_go_back_to_is_told_how_to_name_a_version(
    engine, store, redis, service
) -> None:
    deploy(engine, redis, store, trained(engine, store, "acme"))
    before = state(engine, store, redis)
    with pytest.raises(DeployError, match=r"no previous version.*trainctl rollback acme VERSION"):
        service.rollback_model("acme")
    assert state(engine, store, redis) == before


def test_a_version_removed_while_it_is_rolled_back_to_is_not_deployed(
    engine, store, redis, service, monkeypatch
) -> None:
    first = trained(engine, store, "acme")
    deploy(engine, redis, store, first)
    deploy(engine, redis, store, trained(engine, store, "acme", offset_s=60))
    before = state(engine, store, redis)
    copy = deploy_stage._write_deployed_copy

    def copy_then_collect(*args: Any) -> Path:
        path = copy(*args)
        with engine.begin() as conn:  # garbage collection commits between check and commit
            versions.mark_removed(conn, first, now=NOW)
        return path

    monkeypatch.setattr(deploy_stage, "_write_deployed_copy", copy_then_collect)
    with pytest.raises(ConflictError, match=f"version {first} of organization acme was removed"):
        service.rollback_model("acme")
    assert state(engine, store, redis) == before
    assert status_of(engine, first) == "removed"


def test_trainctl_rollback_prints_the_version_and_sequence(
    engine, store, redis, sqlite_url: str, redis_url: str
) -> None:
    first = trained(engine, store, "acme")
    deploy(engine, redis, store, first)
    deploy(engine, redis, store, trained(engine, store, "acme", offset_s=60))
    env = {**os.environ, "ML_BASE_PATH": str(store.base), "DATABASE_URL": sqlite_url}
    env["REDIS_URL"] = redis_url
    result = subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", "rollback", "acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"rolled back acme to {first} (sequence 3)" in result.stdout
    assert hotswap.read_current(redis, "acme").version == first


# Deploying a named model file


def test_deploy_model_accepts_the_versions_own_file_or_its_deployed_copy(
    engine, store, redis, service
) -> None:
    first = trained(engine, store, "acme")
    second = trained(engine, store, "acme", offset_s=60)
    service.deploy_model("acme", first, store.version_model("acme", first))
    service.deploy_model("acme", second)
    result = service.deploy_model("acme", first, store.deployed_model("acme", first))
    assert (result["sequence"], result["event"], result["changed"]) == (3, "deployed", True)
    through_link = store.current_link("acme") / "model.onnx"
    again = service.deploy_model("acme", first, through_link)  # checked, then nothing to do
    assert (again["sequence"], again["event"], again["changed"]) == (3, None, False)


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        ("outside", ConfigError, "is outside the folders of organization acme"),
        ("another organization", ConfigError, "is outside the folders of organization acme"),
        ("dot-dot escape", ConfigError, "is outside the folders of organization acme"),
        ("another version", DeployError, "is not the model file of version"),
    ],
)
def test_deploy_model_refuses_a_file_that_is_not_the_versions_own(
    engine, store, redis, service, tmp_path: Path, where: str, error: type, message: str
) -> None:
    version = trained(engine, store, "acme")
    other = trained(engine, store, "acme", offset_s=60)
    theirs = trained(engine, store, "globex", offset_s=60)
    stray = tmp_path / "stray.onnx"
    stray.write_bytes(store.version_model("acme", version).read_bytes())
    path = {
        "outside": stray,
        "another organization": store.version_model("globex", theirs),
        "dot-dot escape": store.org_models("acme") / ".." / "globex" / f"model_{theirs}.onnx",
        "another version": store.version_model("acme", other),
    }[where]
    before = state(engine, store, redis)
    with pytest.raises(error, match=message):
        service.deploy_model("acme", version, path)
    assert state(engine, store, redis) == before
    assert not store.deployed_model("acme", version).exists()


# Validating any model file of an organization


@pytest.fixture(scope="module")
def boosters() -> dict[str, Any]:
    return {
        "good": fx.train_booster(*fx.make_data(2000, seed=1)),
        "poor": fx.train_booster(*fx.make_data(2000, seed=3, informative=False)),
    }


def onnx_version(store: ModelStore, engine: Engine, booster: Any, offset_s: int = 0) -> str:
    """A recorded version of acme-plant whose model is a real ONNX export, like train leaves it."""
    version = trained(engine, store, fx.ORG_ID, offset_s=offset_s)
    folder = store.artifacts(fx.ORG_ID, version)
    model = fx.save_model(folder, booster, org_id=fx.ORG_ID, version=version)
    store.version_model(fx.ORG_ID, version).write_bytes(model.read_bytes())
    return version


def with_holdout(engine: Engine, store: ModelStore, version: str) -> Path:
    """Record that the version's run extracted a holdout, and write one."""
    path = store.data_dir(fx.ORG_ID, version) / "holdout.parquet"
    fx.write_holdout(path, *fx.make_data(1500, seed=2))
    run_id = versions.get_version(engine, version)["run_id"]
    with engine.begin() as conn:
        conn.execute(
            update(training_runs)
            .where(training_runs.c.id == run_id)
            .values(data_stats={"holdout_path": str(path), "rows_holdout": 1500})
        )
    return path


def test_validate_model_passes_a_good_model_on_the_latest_holdout(
    engine, store, service, boosters
) -> None:
    older = onnx_version(store, engine, boosters["good"])
    with_holdout(engine, store, older)
    version = onnx_version(store, engine, boosters["good"], offset_s=60)
    holdout = with_holdout(engine, store, version)
    report = service.validate_model(fx.ORG_ID, store.version_model(fx.ORG_ID, version))
    assert report["passed"], report["failures"]
    assert (report["version"], report["holdoutPath"], report["rows"]) == (
        version,
        str(holdout),
        1500,
    )
    parity = next(check for check in report["checks"] if check["name"] == "parity")
    assert "skipped" not in parity["detail"], "the version's native model is used for parity"
    assert status_of(engine, version) == "validated", "validating a file records nothing"


def test_validate_model_rejects_a_model_that_learned_nothing_with_every_reason(
    engine, store, service, boosters
) -> None:
    version = onnx_version(store, engine, boosters["poor"])
    with_holdout(engine, store, version)
    report = service.validate_model(fx.ORG_ID, store.version_model(fx.ORG_ID, version))
    assert not report["passed"]
    assert any("accuracy" in failure for failure in report["failures"])
    assert any("recall" in failure or "precision" in failure for failure in report["failures"])


def test_validate_model_refuses_a_file_outside_the_organization(
    engine, store, service, boosters, tmp_path: Path
) -> None:
    version = onnx_version(store, engine, boosters["good"])
    with_holdout(engine, store, version)
    stray = tmp_path / "model.onnx"
    stray.write_bytes(store.version_model(fx.ORG_ID, version).read_bytes())
    with pytest.raises(ConfigError, match=f"outside the folders of organization {fx.ORG_ID}"):
        service.validate_model(fx.ORG_ID, stray)


def test_validate_model_without_a_holdout_says_to_train_first(
    engine, store, service, boosters
) -> None:
    version = onnx_version(store, engine, boosters["good"])
    with pytest.raises(NotFoundError, match=f"no holdout.*trainctl train {fx.ORG_ID} --wait"):
        service.validate_model(fx.ORG_ID, store.version_model(fx.ORG_ID, version))


# Retention


def files_of(store: ModelStore, org: str, version: str) -> list[Path]:
    return [
        store.version_model(org, version),
        store.deployed_dir(org, version),
        store.artifacts(org, version),
    ]


def test_gc_keeps_the_deployed_the_previous_and_the_newest_and_removes_the_rest(
    engine, store, redis, service
) -> None:
    names = [trained(engine, store, "acme", offset_s=60 * i) for i in range(7)]
    deploy(engine, redis, store, names[0])
    deploy(engine, redis, store, names[1])
    gone = names[2:5]

    planned = service.collect_garbage("acme", keep=2, dry_run=True)
    assert [item["version"] for item in planned] == gone
    assert all(path.exists() for version in gone for path in files_of(store, "acme", version)[::2])
    assert [status_of(engine, version) for version in gone] == ["validated"] * 3

    removed = service.collect_garbage("acme", keep=2)
    assert [item["version"] for item in removed] == gone
    for version in names:
        exists = store.version_model("acme", version).exists()
        assert exists == (version not in gone), version
        assert store.artifacts("acme", version).exists() == (version not in gone)
        assert store.data_dir("acme", version).exists() == (version not in gone)
    assert store.deployed_dir("acme", names[0]).exists(), "the previous version stays deployable"
    assert [status_of(engine, version) for version in gone] == ["removed"] * 3
    assert versions.get_version(engine, gone[0])["removed_at"] == NOW
    events = [e for e in audit.list_events(engine, "acme") if e["event"] == "model.removed"]
    assert sorted(e["details"]["version"] for e in events) == gone
    assert service.collect_garbage("acme", keep=2) == []
    listed = {v["version"]: v for v in service.list_versions("acme")}
    assert listed[gone[0]]["status"] == "removed" and listed[gone[0]]["removedAt"]


def test_gc_never_removes_the_version_of_a_queued_or_running_run(
    engine, store, redis, service
) -> None:
    deploy(engine, redis, store, trained(engine, store, "acme"))
    deploy(engine, redis, store, trained(engine, store, "acme", offset_s=60))
    older = trained(engine, store, "acme", offset_s=-60)
    running = trained(engine, store, "acme", offset_s=-120, verdict=None, active=True)
    removed = service.collect_garbage("acme", keep=0)
    assert [item["version"] for item in removed] == [older]
    assert store.version_model("acme", running).exists()
    assert status_of(engine, running) == "trained"


def test_gc_of_every_organization_also_deletes_files_a_crash_left_behind(
    engine, store, redis, service
) -> None:
    for org in ("acme", "globex"):
        deploy(engine, redis, store, trained(engine, store, org), org)
    old = {org: trained(engine, store, org, offset_s=-60) for org in ("acme", "globex")}
    removed = service.collect_garbage(keep=0)
    assert sorted(item["version"] for item in removed) == sorted(old.values())
    leftover = store.artifacts("acme", old["acme"])
    leftover.mkdir(parents=True)  # as if the process died after the commit, before deleting
    again = service.collect_garbage(keep=0)
    assert [(item["version"], item["status"]) for item in again] == [(old["acme"], "removed")]
    assert not leftover.exists()
    events = [e for e in audit.list_events(engine, "acme") if e["event"] == "model.removed"]
    assert len(events) == 1, "the second pass repairs files; it is not a second removal"


def test_gc_refuses_a_negative_keep(service) -> None:
    with pytest.raises(ConfigError, match="keep"):
        service.collect_garbage("acme", keep=-1)


# Two deployers at once, on PostgreSQL


@pytest.mark.parametrize("second", ["deploy", "rollback"])
def test_racing_deployers_leave_one_winner_and_database_pointer_and_key_agree(
    postgres_url: str, redis_url: str, tmp_path: Path, second: str, monkeypatch
) -> None:
    setup = migrated_engine(postgres_url)
    register(setup, "acme")
    store = ModelStore(tmp_path / "ml")
    mine, theirs = trained(setup, store, "acme"), trained(setup, store, "acme", offset_s=60)
    rounds, barrier = 40, threading.Barrier(2)
    first_results: list[str] = []
    second_results: list[str] = []
    errors: list[BaseException] = []
    swap = deploy_stage.replace_symlink

    def slow_swap(link: Path, target: str) -> None:
        time.sleep(random.random() * 0.015)  # widen the window between reading and swapping
        swap(link, target)

    monkeypatch.setattr(deploy_stage, "replace_symlink", slow_swap)

    def deployer(version: str, action: str, outcomes: list[str]) -> None:
        engine, client = make_engine(postgres_url), redis_lib.Redis.from_url(redis_url)
        call = deploy_stage.rollback if action == "rollback" else deploy_stage.deploy_version
        try:
            for _ in range(rounds):
                barrier.wait(timeout=30)
                time.sleep(random.random() * 0.01)  # sometimes at once, sometimes one after
                try:
                    done = call(engine, client, store, "acme", version, now=NOW, actor=action)
                    # A deploy of the version already deployed changes nothing.
                    changed = getattr(done, "changed", True)
                    outcomes.append("won" if changed else "already deployed")
                except ConflictError:
                    outcomes.append("lost")
                except DeployError:  # a rollback to the version that is already deployed
                    outcomes.append("refused")
        except BaseException as exc:  # shown by the test, not lost in the thread
            errors.append(exc)
            barrier.abort()
        finally:
            engine.dispose()
            client.close()

    threads = [
        threading.Thread(target=deployer, args=(mine, "deploy", first_results)),
        threading.Thread(target=deployer, args=(theirs, second, second_results)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    rounds_run = list(zip(first_results, second_results, strict=True))
    assert len(rounds_run) == rounds
    assert all("won" in pair for pair in rounds_run if "refused" not in pair), rounds_run
    wins = sum(pair.count("won") for pair in rounds_run)
    redis = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    current, _, sequence, link, key = state(setup, store, redis)
    redis.close()
    assert sequence == wins
    assert link == f"deployed_{current}" and key == (current, sequence)
    with setup.connect() as conn:
        deployed = conn.execute(
            select(model_versions.c.version).where(model_versions.c.status == "deployed")
        ).scalars()
        commits = conn.execute(
            select(func.count()).where(audit_events.c.event.like("model.%"))
        ).scalar_one()
        assert list(deployed) == [current] and commits == sequence
    setup.dispose()


def test_a_deploy_committed_while_another_moves_the_pointer_is_not_overwritten(
    postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch
) -> None:
    setup = migrated_engine(postgres_url)
    register(setup, "acme")
    store = ModelStore(tmp_path / "ml")
    mine, theirs = trained(setup, store, "acme"), trained(setup, store, "acme", offset_s=60)
    engines = [make_engine(postgres_url) for _ in range(2)]
    clients = [redis_lib.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    swap, late = deploy_stage.replace_symlink, []

    def other_deploys_meanwhile(link: Path, target: str) -> None:
        if not late:  # the first deployer has read the database and is about to swap
            late.append(
                threading.Thread(target=deploy, args=(engines[1], clients[1], store, theirs))
            )
            late[0].start()
            late[0].join(timeout=0.5)  # it must wait for the pointer lock, not finish first
        swap(link, target)

    monkeypatch.setattr(deploy_stage, "replace_symlink", other_deploys_meanwhile)
    deploy(engines[0], clients[0], store, mine)
    late[0].join(timeout=30)
    assert state(setup, store, clients[0]) == (theirs, mine, 2, f"deployed_{theirs}", (theirs, 2))
    for engine, client in zip(engines, clients, strict=True):
        engine.dispose()
        client.close()
    setup.dispose()


def failed_run(engine: Engine, store: ModelStore, *, offset_s: int, status: str = "failed") -> str:
    """A run that failed (or was cancelled) before recording a model, with its files on disk."""
    now = NOW + timedelta(seconds=offset_s)
    run_id, version = new_run_id(), new_version_id(now)
    runs.create_run(
        engine,
        run_id=run_id,
        org_id="acme",
        version=version,
        config={},
        trigger="t",
        auto_deploy=True,
        actor="t",
        now=now,
    )
    runs.finish_failed(
        engine, run_id, status=status, stage="extract", error="x", trace=None, actor="t", now=now
    )
    data = store.data_dir("acme", version)
    data.mkdir(parents=True)
    (data / "train.parquet").write_bytes(b"rows")
    store.artifacts("acme", version).mkdir(parents=True)
    (store.artifacts("acme", version) / "train.log").write_text("what the script said\n")
    return version


def test_gc_keeps_the_newest_failed_runs_files_for_inspection_and_removes_older_ones(
    engine, store, service
) -> None:
    failed = [failed_run(engine, store, offset_s=60 * i) for i in range(3)]
    cancelled = failed_run(engine, store, offset_s=300, status="cancelled")
    removed = service.collect_garbage("acme", keep=2)
    assert [(item["version"], item["status"]) for item in removed] == [
        (failed[0], "failed-run"),
        (failed[1], "failed-run"),
    ]
    for version in failed[:2]:  # the log and the extracted data alike
        assert not store.artifacts("acme", version).exists()
        assert not store.data_dir("acme", version).exists()
    for version in (failed[2], cancelled):
        assert (
            store.artifacts("acme", version).exists() and store.data_dir("acme", version).exists()
        )
    events = [e for e in audit.list_events(engine, "acme") if e["event"] == "run.files_removed"]
    assert sorted(e["details"]["version"] for e in events) == sorted(failed[:2])
    assert service.collect_garbage("acme", keep=2) == []
