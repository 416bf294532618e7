"""Nothing secret rests in Redis, and every task result expires within a day.

A real worker, a real Redis and a SCADA database in PostgreSQL whose URL carries a password (the
field where a secret legitimately lives). One run trains and deploys; one fails at extract with
that URL in its error, after retries; three requests are refused, two of them echoing a value
that holds the secret and one carrying it under a key of its own. Then every key of the test's
Redis database, of every type, is read: the secret is in none of them, a result holds no task
arguments, and the task events that Flower shows do not carry it either.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from sqlalchemy.engine import make_url

from tests.support.processes import celery_worker, service_env, wait_for
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.registry import runs
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.redis]

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}
RUN_TIMEOUT_S = 180.0
RESULT_TIMEOUT_S = 30.0
DAY_S = 24 * 3600
# What a result may hold: its state, value (or masked error) and bookkeeping; no task arguments.
RESULT_FIELDS = {"status", "result", "traceback", "children", "date_done", "task_id"}


@dataclass
class Stack:
    env: dict[str, str]
    service: TrainingService
    marker: str
    redis: redis_lib.Redis


def with_password(url: str, password: str, *, port: int | None = None) -> str:
    """`url` with `password` (PostgreSQL here trusts local users, so any password connects)."""
    changed = make_url(url).set(password=password)
    if port is not None:
        changed = changed.set(port=port)
    return changed.render_as_string(hide_password=False)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, sqlite_url: str, postgres_factory) -> Iterator[Stack]:
    marker = f"pw-{uuid.uuid4().hex}"
    scada_db = postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=45, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    env = service_env(
        redis_url=redis_url,
        database_url=sqlite_url,
        ml_base_path=tmp_path / "ml",
        extra={"RETRY_BACKOFF_S": "0.2"},
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    secret_url = with_password(scada_db, marker)
    service.register_organization(
        "acme", scada.demo_org_config("acme", secret_url, scada.ACME_LAYOUT)
    )
    # Nothing listens on port 1: extract fails, is retried, and fails for good.
    unreachable = with_password(scada_db, marker, port=1)
    service.register_organization(
        "globex", scada.demo_org_config("globex", unreachable, scada.ACME_LAYOUT)
    )
    client = redis_lib.Redis.from_url(redis_url)
    try:
        yield Stack(env, service, marker, client)
    finally:
        client.close()
        service.close()


@contextlib.contextmanager
def task_events(broker_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every task event the workers send meanwhile, as Flower receives them."""
    app = Celery(broker=broker_url)
    events: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": events.append})
            with receiver.consumer_context() as (consuming, _channel, _consumers):
                ready.set()  # bound to the event exchange: nothing sent from now on is missed
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        consuming.drain_events(timeout=0.5)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(timeout=10), "the event receiver did not connect"
    try:
        yield events
    finally:
        stop.set()
        thread.join(timeout=10)
        app.close()


def send_submit(broker_url: str, config: Any) -> Any:
    """`training.submit` sent by name, as any Celery client does; its result once it is ready."""
    app = Celery(broker=broker_url, backend=broker_url)
    try:
        result = app.send_task("training.submit", args=[config], queue="training.requests")
        result.get(timeout=RESULT_TIMEOUT_S, propagate=False)
        return result
    finally:
        app.close()


def finished(stack: Stack, run_id: str) -> dict[str, Any]:
    done = ("succeeded", "validated", "rejected", "failed", "cancelled")
    return wait_for(
        lambda: (run := runs.get_run(stack.service.rt.engine, run_id))["status"] in done and run,
        RUN_TIMEOUT_S,
        f"run {run_id} to finish",
    )


def every_value(client: redis_lib.Redis) -> dict[bytes, bytes]:
    """Each key of the database with everything it holds, whatever the key's type."""
    dump: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            parts: list[Any] = [client.get(key)]
        elif kind == "list":
            parts = client.lrange(key, 0, -1)
        elif kind == "hash":
            parts = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            parts = [json.dumps(entry, default=repr) for entry in client.xrange(key)]
        else:
            raise AssertionError(f"key {key!r} has a type this test cannot read: {kind}")
        dump[key] = b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    return dump


def test_no_secret_rests_in_redis_and_every_result_expires_within_a_day(
    stack: Stack, tmp_path: Path
) -> None:
    url, marker = stack.env["REDIS_URL"], stack.marker
    refused_configs = [
        # A URL pasted into the wrong field: the refusal echoes the value.
        {
            "organizationId": "acme",
            "dataRange": {"startDate": f"postgresql://scada:{marker}@db/x", "endDate": "x"},
        },
        {"organizationId": f"postgresql://scada:{marker}@db/x"},
        # A secret under a key of its own: refused by name, never echoed.
        {"organizationId": "acme", "scadaPassword": marker},
    ]
    with celery_worker(stack.env, tmp_path) as worker, task_events(url) as events:
        queued = send_submit(url, {"organizationId": "acme", "dataRange": RANGE})
        assert queued.state == "SUCCESS", queued.result
        assert set(queued.result) == {"runId", "version", "queue"}
        failing = send_submit(url, {"organizationId": "globex", "dataRange": RANGE})
        refused = [send_submit(url, config) for config in refused_configs]
        for result in refused:
            assert result.state == "FAILURE" and type(result.result).__name__ == "ConfigError"
            assert marker not in str(result.result) and marker not in (result.traceback or "")
        assert "postgresql://scada:***@db/x" in str(refused[0].result)

        run = finished(stack, queued.result["runId"])
        assert run["status"] in ("succeeded", "rejected"), run["error"] or worker.log_tail()
        failed = finished(stack, failing.result["runId"])
        assert failed["status"] == "failed" and "postgresql" in (failed["error"] or "")
        # The last stage's message is acknowledged just after the run is recorded.
        wait_for(lambda: not stack.redis.exists("unacked"), 30, "every message acknowledged")

    dump = every_value(stack.redis)
    holding = sorted(key for key, value in dump.items() if marker.encode() in key + value)
    assert holding == [], f"the secret rests in Redis under {holding}"
    results = [key for key in dump if key.startswith(b"celery-task-meta-")]
    assert len(results) == 2 + len(refused_configs), sorted(dump)
    for key in results:
        assert 0 < stack.redis.ttl(key) <= DAY_S, f"{key!r} expires in {stack.redis.ttl(key)} s"
        assert set(json.loads(dump[key])) <= RESULT_FIELDS, dump[key]
    shown = [json.dumps(event, default=repr) for event in events]
    assert any(event.get("type") == "task-failed" for event in events), "events were captured"
    assert not [text for text in shown if marker in text], "a task event carries the secret"
