"""Deploying a version: files, database, pointer and hot-swap key move together, on a real Redis."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import Engine

from tests.support.registry_fixtures import (
    NOW,
    finished_run,
    migrated_engine,
    record_model,
    register,
)
from training_tasks.errors import DeployError
from training_tasks.files import sha256_file
from training_tasks.protocol import hotswap
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import orgs, versions
from training_tasks.stages.deploy import deploy, reconcile


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme")
    register(engine, "globex")
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "ml")


pytestmark = pytest.mark.integration


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def trained(
    engine: Engine, store: ModelStore, org: str, *, passed: bool = True, offset_s: int = 0
) -> str:
    now = NOW + timedelta(seconds=offset_s)
    run_id, version = finished_run(engine, org, now)
    record_model(engine, store, org, version, run_id, now=now, report={"passed": passed})
    return version


def test_a_deploy_writes_the_copy_moves_the_pointer_and_sets_the_key(engine, store, redis) -> None:
    version = trained(engine, store, "acme")
    deployment = deploy(engine, redis, store, "acme", version, now=NOW, actor="test")
    deployed = store.deployed_model("acme", version)
    assert deployed.read_bytes() == store.version_model("acme", version).read_bytes()
    assert os.readlink(store.current_link("acme")) == f"deployed_{version}"
    assert orgs.get_org_row(engine, "acme")["current_version"] == version
    assert versions.get_version(engine, version)["status"] == "deployed"
    stored = json.loads(redis.get("ml:model:acme:current"))
    assert stored == {
        "organizationId": "acme",
        "version": version,
        "modelPath": str(deployed),
        "sha256": sha256_file(deployed),
        "deployedAt": "2026-06-01T12:00:00Z",
        "sequence": 1,
    }
    assert deployment.sequence == 1


def test_the_next_deploy_supersedes_the_previous_and_bumps_the_sequence(
    engine, store, redis
) -> None:
    first = trained(engine, store, "acme")
    second = trained(engine, store, "acme", offset_s=60)
    deploy(engine, redis, store, "acme", first, now=NOW, actor="t")
    pubsub = redis.pubsub()
    pubsub.subscribe("ml:models:acme")
    pubsub.get_message(timeout=1)
    deploy(engine, redis, store, "acme", second, now=NOW, actor="t")
    message = pubsub.get_message(timeout=1)
    event, announced = hotswap.parse(message["data"])
    assert (event, announced.version, announced.sequence) == ("deployed", second, 2)
    assert versions.get_version(engine, first)["status"] == "superseded"
    assert orgs.get_org_row(engine, "acme")["previous_version"] == first
    assert store.deployed_model("acme", first).exists(), "the previous version is kept for rollback"


def test_each_deployed_folder_records_what_the_redis_key_says_for_a_cache_without_redis(
    engine, store, redis
) -> None:
    first = trained(engine, store, "acme")
    second = trained(engine, store, "acme", offset_s=60)
    deploy(engine, redis, store, "acme", first, now=NOW, actor="t")
    deploy(engine, redis, store, "acme", second, now=NOW, actor="t")
    record = store.deployed_dir("acme", second) / hotswap.DEPLOYMENT_FILE
    assert json.loads(record.read_text()) == json.loads(redis.get("ml:model:acme:current"))
    deploy(engine, redis, store, "acme", first, now=NOW, actor="t")  # back to an existing folder
    again = json.loads((store.deployed_dir("acme", first) / hotswap.DEPLOYMENT_FILE).read_text())
    assert (again["version"], again["sequence"]) == (first, 3)


def test_a_fifo_or_link_planted_as_the_deployment_record_neither_blocks_nor_redirects_deploy(
    engine, store, redis, tmp_path
) -> None:
    version = trained(engine, store, "acme")
    record = store.deployed_dir("acme", version) / hotswap.DEPLOYMENT_FILE
    record.parent.mkdir(parents=True)
    os.mkfifo(record)  # with no writer, a blocking read would hang the deploy for ever
    deploy(engine, redis, store, "acme", version, now=NOW, actor="t")
    assert json.loads(record.read_text())["version"] == version
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    record.unlink()
    record.symlink_to(outside)
    assert reconcile(engine, redis, store) == []
    assert outside.read_text() == "{}" and not record.is_symlink()


def test_a_rejected_version_is_not_deployed_and_nothing_changes(engine, store, redis) -> None:
    good = trained(engine, store, "acme")
    deploy(engine, redis, store, "acme", good, now=NOW, actor="t")
    bad = trained(engine, store, "acme", passed=False, offset_s=60)
    with pytest.raises(DeployError, match="rejected"):
        deploy(engine, redis, store, "acme", bad, now=NOW, actor="t")
    assert orgs.get_org_row(engine, "acme")["current_version"] == good
    assert os.readlink(store.current_link("acme")) == f"deployed_{good}"
    assert hotswap.read_current(redis, "acme").version == good


def test_another_organizations_version_is_refused(engine, store, redis) -> None:
    theirs = trained(engine, store, "globex")
    with pytest.raises(DeployError, match="is not a version of organization acme") as err:
        deploy(engine, redis, store, "acme", theirs, now=NOW, actor="t")
    assert "globex" not in str(err.value)  # refused as if it did not exist
    assert orgs.get_org_row(engine, "acme")["current_version"] is None


def test_a_model_file_changed_on_disk_is_refused(engine, store, redis) -> None:
    version = trained(engine, store, "acme")
    store.version_model("acme", version).write_bytes(b"tampered")
    with pytest.raises(DeployError, match="does not match the sha256"):
        deploy(engine, redis, store, "acme", version, now=NOW, actor="t")


def test_a_stale_publish_cannot_move_readers_backwards(redis) -> None:
    newer = hotswap.Deployment("acme", "v2", "/m2", "b" * 64, "t", 5)
    older = hotswap.Deployment("acme", "v1", "/m1", "a" * 64, "t", 4)
    assert hotswap.publish(redis, newer, "deployed")
    assert not hotswap.publish(redis, older, "deployed")
    assert hotswap.read_current(redis, "acme").version == "v2"


def test_reconcile_repairs_the_pointer_and_key_after_a_crash(engine, store, redis) -> None:
    version = trained(engine, store, "acme")
    deploy(engine, redis, store, "acme", version, now=NOW, actor="t")
    store.current_link("acme").unlink()
    redis.delete("ml:model:acme:current")
    fixes = reconcile(engine, redis, store)
    assert len(fixes) == 2
    assert os.readlink(store.current_link("acme")) == f"deployed_{version}"
    assert hotswap.read_current(redis, "acme").sequence == 1
    assert reconcile(engine, redis, store) == []


def test_a_non_python_subscriber_reads_the_same_message_from_the_channel(
    engine, store, redis, redis_url
) -> None:
    import shutil
    import subprocess

    from training_tasks.demo.child_process import die_with_parent

    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is installed with Redis; the channel must be readable without Python"
    proc = subprocess.Popen(
        [cli, "-u", redis_url, "--raw", "SUBSCRIBE", "ml:models:acme"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline().strip() for _ in range(3)] == [
            "subscribe",
            "ml:models:acme",
            "1",
        ]
        version = trained(engine, store, "acme")
        deploy(engine, redis, store, "acme", version, now=NOW, actor="t")
        lines = [proc.stdout.readline().strip() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert lines[:2] == ["message", "ml:models:acme"]
    doc = json.loads(lines[2])
    assert (doc["event"], doc["version"], doc["sequence"]) == ("deployed", version, 1)
