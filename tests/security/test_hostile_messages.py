"""Hostile Celery messages against a real worker: each fails alone, clearly, and the worker goes on.

JSON only (a pickle message is refused before it is deserialized), a malformed or oversized
payload fails its task with the reason, and garbage on a queue is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from kombu import Connection

from tests.support.processes import Worker, celery_worker, service_env, wait_for
from tests.support.registry_fixtures import ORG_DOC
from training_tasks.client import TrainingClient
from training_tasks.config.settings import Settings
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.redis]

ORG = {**ORG_DOC, "scadaDbConfig": {"urlEnv": "NOT_SET_HERE"}}


class Marker:
    """Written by the pickle payload if it is ever unpickled: it must never be."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture
def worker(
    tmp_path: Path, redis_url: str, sqlite_url: str
) -> Iterator[tuple[Worker, dict[str, str]]]:
    env = service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=tmp_path / "ml")
    service = TrainingService(build_runtime(Settings.from_env(env)))
    service.register_organization("acme", ORG)
    service.close()
    with celery_worker(env, tmp_path) as running:
        yield running, env


def still_works(env: dict[str, str]) -> None:
    """The worker still answers and still refuses a bad request properly."""
    client = TrainingClient(env["REDIS_URL"])
    result = client.submit({"organizationId": "acme", "hyperparameters": {"learningRate": -1}})
    with pytest.raises(Exception, match=r"hyperparameters\.learningRate"):
        result.get(timeout=30)
    client.close()


def test_a_pickle_message_is_refused_unread_and_the_worker_goes_on(worker, tmp_path: Path) -> None:
    running, env = worker
    marker = tmp_path / "unpickled"
    with Connection(env["REDIS_URL"]) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            {"not": Marker(marker)},
            routing_key="training.requests",
            headers={"task": "training.submit", "id": "p1", "argsrepr": "()"},
        )
    wait_for(lambda: "pickle" in running.log_tail(100), 30, "the worker to refuse the pickle")
    assert not marker.exists()
    still_works(env)


def test_a_stage_given_something_other_than_a_run_id_fails_that_task(worker) -> None:
    running, env = worker
    app = Celery(broker=env["REDIS_URL"])
    payloads = ({"$where": "1"}, "../../etc/passwd", ["a"] * 3, None)
    for payload in payloads:
        app.send_task("training.extract", args=[payload], queue="org.acme")
    app.close()
    wait_for(
        lambda: (
            running.log_tail(400).count("is not a valid run id") >= len(payloads)
            or running.log_tail(400).count("runId") >= len(payloads)
        ),
        30,
        "each task to fail naming runId",
    )
    assert running.proc.poll() is None
    still_works(env)


def test_an_oversized_request_is_refused_with_its_size_and_records_nothing(worker) -> None:
    _running, env = worker
    client = TrainingClient(env["REDIS_URL"])
    huge = {"organizationId": "acme", "featureColumns": ["x" * 100] * 2000}
    with pytest.raises(Exception, match="bytes of JSON"):
        client.submit(huge).get(timeout=30)
    client.close()
    service = TrainingService(build_runtime(Settings.from_env(env)))
    assert service.get_training_history("acme") == []
    service.close()


def test_garbage_on_a_queue_is_dropped_and_the_worker_goes_on(worker) -> None:
    running, env = worker
    client = redis_lib.Redis.from_url(env["REDIS_URL"])
    client.lpush("training.requests", b"\x00\xffnot json at all")
    client.lpush("training.requests", json.dumps({"body": "e30=", "headers": {}}))
    wait_for(lambda: client.llen("training.requests") == 0, 30, "the garbage to be consumed")
    client.close()
    wait_for(lambda: running.log_tail(100).count("not a Celery message") == 2, 10, "two log lines")
    assert running.proc.poll() is None
    still_works(env)


def test_pickle_is_not_an_accepted_content_type() -> None:
    import celeryconfig

    assert celeryconfig.accept_content == ["json"] and celeryconfig.task_serializer == "json"
