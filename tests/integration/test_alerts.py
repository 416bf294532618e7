"""Failure alerts end to end: a real Redis subscriber and a real local HTTP webhook receive them."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.support.local_servers import Webhook
from training_tasks.config.org import parse_org_config
from training_tasks.config.settings import Settings
from training_tasks.pipeline.alerts import ALERT_CHANNEL, WEBHOOK_ATTEMPTS, Alert, send_alert
from training_tasks.protocol.paths import ModelStore
from training_tasks.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.redis]

VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
AT = datetime(2026, 6, 1, 12, 0, 5, tzinfo=UTC)
TIMEOUT_S = 0.3
# Three attempts cut off at TIMEOUT_S each, with 0.5 s and 1 s of backoff between them.
BOUND_S = WEBHOOK_ATTEMPTS * TIMEOUT_S + 1.5


@pytest.fixture
def webhooks() -> Iterator[list[Webhook]]:
    started: list[Webhook] = []
    yield started
    for hook in started:
        hook.server.shutdown()
        hook.server.server_close()


@pytest.fixture
def subscriber(redis: redis_lib.Redis) -> Iterator[Any]:
    pubsub = redis.pubsub()
    pubsub.subscribe(ALERT_CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def make_runtime(tmp_path: Path, client: Any, webhook_url: str | None) -> Runtime:
    env = {"ML_BASE_PATH": str(tmp_path), "ALERT_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S)}
    if webhook_url:
        env["ALERT_WEBHOOK_URL"] = webhook_url
    # Alerts use no database; the engine is left out.
    return Runtime(Settings.from_env(env), None, client, ModelStore(tmp_path))  # type: ignore[arg-type]


def rejection(org: str, reason: str = "recall 0.61 is below 0.70") -> Alert:
    return Alert(
        event="run.rejected",
        organization_id=org,
        run_id="run-7",
        version=VERSION,
        stage="validate",
        reason=reason,
        at=AT,
        details={"failedChecks": ["recall"]},
    )


def received(pubsub: Any, org: str) -> dict[str, Any]:
    """The next alert for `org`; channels span Redis databases, so other tests' are skipped."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            alert = json.loads(message["data"])
            if alert["organizationId"] == org:
                return alert
    raise AssertionError(f"no alert for {org} on {ALERT_CHANNEL} within 5 s")


def test_a_subscriber_and_the_webhook_receive_the_same_alert_json(
    tmp_path: Path, redis: redis_lib.Redis, subscriber: Any, org: str, webhooks: list[Webhook]
) -> None:
    hook = Webhook()
    webhooks.append(hook)
    result = send_alert(make_runtime(tmp_path, redis, hook.url()), rejection(org))
    expected = {
        "event": "run.rejected",
        "organizationId": org,
        "runId": "run-7",
        "version": VERSION,
        "stage": "validate",
        "reason": "recall 0.61 is below 0.70",
        "attempt": None,
        "at": "2026-06-01T12:00:05Z",
        "details": {"failedChecks": ["recall"]},
    }
    assert received(subscriber, org) == expected
    assert hook.bodies() == [expected]
    request = hook.requests[0]
    assert request["path"] == "/hook"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"] == "training-service-alerts"
    assert result["published"] >= 1
    assert result["webhooks"] == {hook.url(): "delivered"}


def test_a_500_is_retried_and_the_alert_delivered_on_the_second_request(
    tmp_path: Path, redis: redis_lib.Redis, org: str, webhooks: list[Webhook]
) -> None:
    hook = Webhook(500)
    webhooks.append(hook)
    result = send_alert(make_runtime(tmp_path, redis, hook.url()), rejection(org))
    assert result["webhooks"] == {hook.url(): "delivered"}
    assert len(hook.requests) == 2
    assert hook.bodies()[0] == hook.bodies()[1]


def test_a_400_is_not_retried_and_the_failure_is_logged_with_the_url(
    tmp_path: Path,
    redis: redis_lib.Redis,
    org: str,
    webhooks: list[Webhook],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Webhook(400, 400)
    webhooks.append(hook)
    result = send_alert(make_runtime(tmp_path, redis, hook.url()), rejection(org))
    assert result["webhooks"] == {hook.url(): "failed: HTTP 400"}
    assert len(hook.requests) == 1
    assert f"not delivered to webhook {hook.url()}: failed: HTTP 400" in caplog.text


def test_a_redirect_is_not_followed(
    tmp_path: Path, redis: redis_lib.Redis, org: str, webhooks: list[Webhook]
) -> None:
    hook = Webhook(302)
    webhooks.append(hook)
    result = send_alert(make_runtime(tmp_path, redis, hook.url()), rejection(org))
    assert result["webhooks"] == {hook.url(): "failed: HTTP 302 (redirects are not followed)"}
    assert [r["path"] for r in hook.requests] == ["/hook"]


def test_a_webhook_that_never_answers_is_given_up_within_the_bound(
    tmp_path: Path, redis: redis_lib.Redis, org: str
) -> None:
    # Listens but never accepts: connections complete in the backlog and no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        started = time.monotonic()
        result = send_alert(make_runtime(tmp_path, redis, url), rejection(org))
        elapsed_s = time.monotonic() - started
    assert result["webhooks"] == {url: "failed: no answer within 0.3 s after 3 attempts"}
    assert BOUND_S - 0.1 <= elapsed_s <= BOUND_S + 0.5


def test_an_unreachable_redis_does_not_stop_the_webhook(
    tmp_path: Path, org: str, webhooks: list[Webhook], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dead = redis_lib.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=1)
    hook = Webhook()
    webhooks.append(hook)
    started = time.monotonic()
    result = send_alert(make_runtime(tmp_path, dead, hook.url()), rejection(org))
    # redis-py retries a refused connection for seconds; the alert waits only TIMEOUT_S for it.
    assert time.monotonic() - started < TIMEOUT_S + 0.5
    assert result == {"published": None, "webhooks": {hook.url(): "delivered"}}
    assert hook.bodies()[0]["organizationId"] == org
    assert "alert not published on ml:alerts" in caplog.text


def test_secrets_reach_neither_subscriber_webhooks_nor_log_and_url_credentials_go_as_basic_auth(
    tmp_path: Path,
    redis: redis_lib.Redis,
    subscriber: Any,
    org: str,
    webhooks: list[Webhook],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="training_tasks.alerts")
    global_hook, org_hook = Webhook(), Webhook()
    webhooks += [global_hook, org_hook]
    global_url = global_hook.url("/global", userinfo="ops:hunter2@")
    org_config = parse_org_config(
        {
            "mlModelConfig": {},
            "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"},
            "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
            "alerts": {"webhookUrl": org_hook.url("/acme")},
        },
        org,
    )
    reason = "extract failed: postgresql://scada:hunter2@db.internal:5432/plant refused"
    result = send_alert(
        make_runtime(tmp_path, redis, global_url),
        rejection(org, reason),
        org_webhook_url=org_config.alert_webhook_url,
    )
    masked = "extract failed: postgresql://scada:***@db.internal:5432/plant refused"
    assert received(subscriber, org)["reason"] == masked
    assert [b["reason"] for b in global_hook.bodies() + org_hook.bodies()] == [masked, masked]
    assert global_hook.requests[0]["headers"]["Authorization"] == "Basic b3BzOmh1bnRlcjI="
    assert org_hook.requests[0]["path"] == "/acme"
    assert result["webhooks"] == {
        global_hook.url("/global", userinfo="***@"): "delivered",
        org_hook.url("/acme"): "delivered",
    }
    assert f"ALERT run.rejected {org} run run-7 version {VERSION} at validate: {masked}" in (
        caplog.text
    )
    assert "hunter2" not in caplog.text
