"""The `training.status` document other services read: built from the training log, as specified.

Its keys and their JSON types are a contract for the Python and the TypeScript client; these tests
call the plain function the task wraps, on a real (SQLite) training log.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from tests.support.registry_fixtures import NOW, migrated_engine, queued_run, register
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.pipeline.run_status import read_run_status
from training_tasks.registry import runs

CONTRACT_KEYS = {
    "runId",
    "organizationId",
    "version",
    "status",
    "finished",
    "stage",
    "stagesDone",
    "progress",
    "trigger",
    "queuedAt",
    "startedAt",
    "finishedAt",
    "error",
}


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme-corp")
    return engine


def test_a_queued_run_reads_as_not_finished_with_only_its_queue_time(engine: Engine) -> None:
    run = queued_run(engine, "acme-corp", NOW)
    doc = read_run_status(engine, run["id"])
    assert set(doc) == CONTRACT_KEYS
    assert json.loads(json.dumps(doc)) == doc, "the document is plain JSON"
    assert doc["runId"] == run["id"] and doc["version"] == run["version"]
    assert doc["organizationId"] == "acme-corp"
    assert (doc["status"], doc["finished"], doc["stagesDone"]) == ("queued", False, 0)
    assert doc["queuedAt"] == "2026-06-01T12:00:00Z"
    assert doc["startedAt"] is None and doc["finishedAt"] is None and doc["error"] is None
    assert doc["trigger"] == "t"


def test_a_running_run_shows_its_stage_progress_and_start(engine: Engine) -> None:
    run_id = queued_run(engine, "acme-corp", NOW)["id"]
    started = NOW + timedelta(seconds=5)
    runs.claim_stage(engine, run_id, "extract", owner="w1", worker="w", now=started, ttl_s=60)
    runs.set_progress(engine, run_id, {"stage": "extract", "rows": 1200})
    doc = read_run_status(engine, run_id)
    assert (doc["status"], doc["finished"], doc["stage"]) == ("running", False, "extract")
    assert doc["progress"] == {"stage": "extract", "rows": 1200}
    assert doc["startedAt"] == "2026-06-01T12:00:05Z"


def test_a_failed_run_is_finished_with_its_recorded_error_and_no_traceback(engine: Engine) -> None:
    run_id = queued_run(engine, "acme-corp", NOW)["id"]
    runs.finish_failed(
        engine,
        run_id,
        status="failed",
        stage="train",
        error="TrainingError: the script exited with status 1",
        trace='Traceback (most recent call last):\n  File "train_model.py", line 1',
        actor="t",
        now=NOW + timedelta(minutes=1),
    )
    doc = read_run_status(engine, run_id)
    assert (doc["status"], doc["finished"]) == ("failed", True)
    assert doc["error"] == "TrainingError: the script exited with status 1"
    assert "Traceback" not in json.dumps(doc)
    assert doc["finishedAt"] == "2026-06-01T12:01:00Z"


def test_an_unknown_run_id_is_not_found_naming_it_and_what_to_pass(engine: Engine) -> None:
    unknown = "0" * 32
    with pytest.raises(NotFoundError, match=f"training run {unknown} does not exist") as err:
        read_run_status(engine, unknown)
    assert "runId that training.submit returned" in str(err.value)


@pytest.mark.parametrize("malformed", ["acme-corp", "", "A" * 32, 42, None])
def test_a_malformed_run_id_is_refused_naming_the_field(engine: Engine, malformed: object) -> None:
    with pytest.raises(ConfigError) as err:
        read_run_status(engine, malformed)
    assert err.value.field == "runId"
    assert "is not a run id" in str(err.value)
    assert "runId that training.submit returned" in str(err.value)
