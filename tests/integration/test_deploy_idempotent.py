"""Deploying the version that is already deployed changes nothing, and says so.

On a real Redis and SQLite: the deploy sequence, the audit trail, the Redis key and the hot-swap
channel stay as they were, through the Python API, `trainctl deploy` and a pipeline deploy stage
delivered again after its first delivery deployed. What a crash lost (the Redis key) is repaired
without a new sequence. A rollback to the deployed version is refused in the same words.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine

from tests.integration.test_rollback_and_gc import PLANT_DOC, state, trained
from tests.support import onnx_fixtures as fx
from tests.support.registry_fixtures import NOW, migrated_engine, register
from training_tasks.config.settings import Settings
from training_tasks.pipeline.stage_bodies import deploy_body
from training_tasks.pipeline.stage_runner import StageContext
from training_tasks.protocol import hotswap
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import audit, runs, versions
from training_tasks.runtime import Runtime
from training_tasks.service import TrainingService

pytestmark = pytest.mark.integration

QUIET_S = 1.0  # how long the channel must stay silent


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme")
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
def runtime(engine, redis, store, sqlite_url: str, redis_url: str) -> Runtime:
    env = {"ML_BASE_PATH": str(store.base), "DATABASE_URL": sqlite_url, "REDIS_URL": redis_url}
    return Runtime(Settings.from_env(env), engine, redis, store, lambda: NOW)


@pytest.fixture
def service(runtime: Runtime) -> TrainingService:
    return TrainingService(runtime)


@pytest.fixture
def channel(redis: redis_lib.Redis) -> Iterator[Callable[[], list[tuple[str | None, int]]]]:
    """What the organization's hot-swap channel carries from now on: (event, sequence) pairs."""
    pubsub = redis.pubsub()
    pubsub.subscribe(hotswap.channel("acme"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    def heard() -> list[tuple[str | None, int]]:
        messages, deadline = [], time.monotonic() + QUIET_S
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:
                event, deployment = hotswap.parse(message["data"])
                messages.append((event, deployment.sequence))
        return messages

    yield heard
    pubsub.close()


def audit_rows(engine: Engine) -> int:
    return len(audit.list_events(engine, "acme", limit=1000))


def trainctl(store: ModelStore, sqlite_url: str, redis_url: str, *args: str) -> Any:
    env = {**os.environ, "ML_BASE_PATH": str(store.base), "DATABASE_URL": sqlite_url}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_deploying_the_deployed_version_again_changes_nothing_and_announces_nothing(
    engine, store, redis, service, channel
) -> None:
    first = trained(engine, store, "acme")
    service.deploy_model("acme", trained(engine, store, "acme", offset_s=-60))
    service.deploy_model("acme", first)
    assert channel() == [("deployed", 1), ("deployed", 2)]
    before, rows, key = (
        state(engine, store, redis),
        audit_rows(engine),
        redis.get("ml:model:acme:current"),
    )

    result = service.deploy_model("acme", first)

    assert (result["version"], result["sequence"]) == (first, 2)
    assert (result["changed"], result["event"], result["repaired"]) == (False, None, [])
    assert state(engine, store, redis) == before
    assert audit_rows(engine) == rows
    assert redis.get("ml:model:acme:current") == key
    assert channel() == []
    assert versions.get_version(engine, first)["status"] == "deployed"


def test_trainctl_deploy_of_the_deployed_version_says_so_in_one_line_and_exits_0(
    engine, store, redis, channel, sqlite_url: str, redis_url: str
) -> None:
    version = trained(engine, store, "acme")
    first = trainctl(store, sqlite_url, redis_url, "deploy", "acme", version)
    assert first.returncode == 0 and first.stdout.startswith(
        f"deployed acme {version} (sequence 1)"
    )
    assert channel() == [("deployed", 1)]
    before, rows = state(engine, store, redis), audit_rows(engine)

    again = trainctl(store, sqlite_url, redis_url, "deploy", "acme", version)

    assert again.returncode == 0, again.stderr
    said = f"version {version} is already the deployed version of organization acme (sequence 1)"
    assert again.stdout.splitlines() == [f"{said}; nothing changed"]
    assert (state(engine, store, redis), audit_rows(engine), channel()) == (before, rows, [])
    # A rollback to it stays a refusal (a rollback asks for another version), in the same words.
    refused = trainctl(store, sqlite_url, redis_url, "rollback", "acme", version)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {said}; nothing was rolled back.")
    assert (state(engine, store, redis), audit_rows(engine), channel()) == (before, rows, [])


def test_a_deploy_of_the_deployed_version_restores_a_lost_redis_key_without_a_new_sequence(
    engine, store, redis, service, channel
) -> None:
    version = trained(engine, store, "acme")
    service.deploy_model("acme", version)
    assert channel() == [("deployed", 1)]
    before, rows = state(engine, store, redis), audit_rows(engine)
    redis.delete("ml:model:acme:current")  # Redis lost it (a restart without persistence)

    result = service.deploy_model("acme", version)

    assert (result["changed"], result["sequence"]) == (False, 1)
    assert result["repaired"] == ["set the Redis key (sequence 1)"]
    assert state(engine, store, redis) == before
    assert audit_rows(engine) == rows
    assert channel() == [("deployed", 1)], "caches that missed it hear it; the rest ignore it"


# The pipeline's deploy stage, delivered again after its first delivery deployed


def deploy_stage_of(runtime: Runtime, version: str) -> Callable[[], Any]:
    """Run the deploy stage body for the run that made `version`, as a redelivery would."""
    record = versions.get_version(runtime.engine, version)
    run = {**runs.get_run(runtime.engine, record["run_id"]), "data_stats": {}}
    return lambda: deploy_body(StageContext(runtime, run, lambda _: None, threading.Event()))


def test_a_deploy_stage_delivered_again_announces_nothing(
    engine, store, redis, runtime, channel
) -> None:
    version = trained(engine, store, "acme", active=True)
    stage = deploy_stage_of(runtime, version)
    assert stage().updates["data_stats"]["deployedSequence"] == 1
    assert channel() == [("deployed", 1)]
    before, rows = state(engine, store, redis), audit_rows(engine)

    again = stage()  # the worker died before recording the stage; the reaper sends it again

    assert again.final_status == "succeeded"
    assert again.updates["data_stats"]["deployedSequence"] == 1
    assert (state(engine, store, redis), audit_rows(engine), channel()) == (before, rows, [])


def test_a_deploy_stage_delivered_again_does_not_undo_a_later_rollback(
    engine, store, redis, runtime, service, channel
) -> None:
    older = trained(engine, store, "acme", offset_s=-60)
    service.deploy_model("acme", older)
    version = trained(engine, store, "acme", active=True)
    stage = deploy_stage_of(runtime, version)
    stage()
    service.rollback_model("acme")  # the new model misbehaves: back to the older one
    assert channel() == [("deployed", 1), ("deployed", 2), ("rolled_back", 3)]
    before, rows = state(engine, store, redis), audit_rows(engine)

    again = stage()

    assert again.final_status == "succeeded"
    assert "deployedSequence" not in again.updates["data_stats"]
    assert state(engine, store, redis) == before and before[0] == older
    assert (audit_rows(engine), channel()) == (rows, [])
