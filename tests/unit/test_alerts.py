"""Failure alerts without a network: the JSON, the log line, the retry policy, the org setting."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.unit.test_org_config import BASE
from training_tasks.config.org import parse_org_config
from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError
from training_tasks.pipeline import alerts
from training_tasks.pipeline.alerts import ALERT_CHANNEL, Alert, send_alert
from training_tasks.protocol.paths import ModelStore
from training_tasks.redaction import display_url
from training_tasks.runtime import Runtime

VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
AT = datetime(2026, 6, 1, 12, 0, 5, 250000, tzinfo=UTC)
SCADA = "postgresql://scada:hunter2@db.internal:5432/plant"
GLOBAL_HOOK = "https://alerts.example.com/hook"
ORG_HOOK = "https://acme.example.com/ml-alerts"


class FakeWebhooks:
    """Stands in for one HTTP attempt: records the URL and answers from a script."""

    def __init__(self) -> None:
        self.script: list[tuple[str | None, bool]] = []
        self.urls: list[str] = []
        self.sleeps: list[float] = []

    def attempt(self, opener: Any, request: Any, timeout_s: float) -> tuple[str | None, bool]:
        self.urls.append(request.full_url)
        return self.script.pop(0) if self.script else (None, False)


@pytest.fixture(autouse=True)
def webhooks(monkeypatch: pytest.MonkeyPatch) -> FakeWebhooks:
    fake = FakeWebhooks()
    monkeypatch.setattr(alerts, "_attempt", fake.attempt)
    monkeypatch.setattr(alerts, "_sleep", fake.sleeps.append)
    return fake


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def subscriber(server: fakeredis.FakeServer) -> Iterator[Any]:
    pubsub = fakeredis.FakeRedis(server=server).pubsub()
    pubsub.subscribe(ALERT_CHANNEL)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def make_runtime(
    tmp_path: Path, server: fakeredis.FakeServer, webhook: str | None = None
) -> Runtime:
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path)})
    settings = replace(settings, alert_webhook_url=webhook, alert_webhook_timeout_s=0.3)
    client = fakeredis.FakeRedis(server=server)
    return Runtime(settings, None, client, ModelStore(tmp_path))  # type: ignore[arg-type]


def train_failure(**changes: Any) -> Alert:
    alert = Alert(
        event="run.failed",
        organization_id="acme-corp",
        run_id="run-42",
        version=VERSION,
        stage="train",
        reason=f"extract could not reach {SCADA}: timed out",
        at=AT,
        attempt=3,
        details={"exitCode": 137, "source": {"urls": [SCADA, "redis://:s3cret@cache:6379/0"]}},
    )
    return replace(alert, **changes)


def received(pubsub: Any) -> dict[str, Any]:
    message = pubsub.get_message(timeout=1)
    assert message is not None and message["type"] == "message"
    return json.loads(message["data"])


def test_the_alert_json_names_organization_run_version_stage_reason_and_time() -> None:
    assert train_failure().to_dict() == {
        "event": "run.failed",
        "organizationId": "acme-corp",
        "runId": "run-42",
        "version": VERSION,
        "stage": "train",
        "reason": "extract could not reach postgresql://scada:***@db.internal:5432/plant: timed out",
        "attempt": 3,
        "at": "2026-06-01T12:00:05.250000Z",
        "details": {
            "exitCode": 137,
            "source": {
                "urls": [
                    "postgresql://scada:***@db.internal:5432/plant",
                    "redis://:***@cache:6379/0",
                ]
            },
        },
    }


def test_a_subscriber_on_ml_alerts_receives_the_alert_json(
    tmp_path: Path, server: fakeredis.FakeServer, subscriber: Any
) -> None:
    result = send_alert(make_runtime(tmp_path, server), train_failure())
    assert result == {"published": 1, "webhooks": {}}
    assert received(subscriber) == train_failure().to_dict()


def test_the_log_line_says_what_failed_where_in_one_error_line(
    tmp_path: Path, server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training_tasks.alerts")
    rt = make_runtime(tmp_path, server)
    send_alert(rt, train_failure(reason="killed:\nout of memory"))
    deploy = train_failure(
        event="deploy.failed", run_id=None, stage=None, reason="disk full", attempt=None
    )
    send_alert(rt, deploy)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.name for r in errors] == ["training_tasks.alerts"] * 2
    assert [r.getMessage() for r in errors] == [
        f"ALERT run.failed acme-corp run run-42 version {VERSION} at train attempt 3: killed: out of memory",
        f"ALERT deploy.failed acme-corp version {VERSION}: disk full",
    ]


def test_a_password_in_the_reason_or_details_reaches_neither_subscriber_webhook_nor_log(
    tmp_path: Path,
    server: fakeredis.FakeServer,
    subscriber: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="training_tasks.alerts")
    result = send_alert(make_runtime(tmp_path, server, GLOBAL_HOOK), train_failure())
    message = json.dumps(received(subscriber))
    assert "scada:***@db.internal" in message
    for secret in ("hunter2", "s3cret"):
        assert secret not in message
        assert secret not in caplog.text
    assert result["webhooks"] == {GLOBAL_HOOK: "delivered"}


def test_an_unreachable_redis_is_logged_and_the_webhook_still_gets_the_alert(
    tmp_path: Path,
    server: fakeredis.FakeServer,
    webhooks: FakeWebhooks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.connected = False
    result = send_alert(make_runtime(tmp_path, server, GLOBAL_HOOK), train_failure())
    assert result == {"published": None, "webhooks": {GLOBAL_HOOK: "delivered"}}
    assert webhooks.urls == [GLOBAL_HOOK]
    assert any(
        r.levelno == logging.WARNING and "not published on ml:alerts" in r.getMessage()
        for r in caplog.records
    )


def test_a_redis_that_does_not_answer_holds_the_alert_no_longer_than_the_timeout(
    tmp_path: Path, server: fakeredis.FakeServer, webhooks: FakeWebhooks
) -> None:
    class SilentRedis:
        def publish(self, channel: str, body: str) -> int:
            time.sleep(2)
            return 1

    rt = replace(make_runtime(tmp_path, server, GLOBAL_HOOK), redis=SilentRedis())
    started = time.monotonic()
    result = send_alert(rt, train_failure())
    assert time.monotonic() - started < 1.0
    assert result == {"published": None, "webhooks": {GLOBAL_HOOK: "delivered"}}


def test_a_webhook_is_retried_after_a_5xx_and_a_timeout_with_backoff(
    tmp_path: Path, server: fakeredis.FakeServer, webhooks: FakeWebhooks
) -> None:
    webhooks.script = [("HTTP 503", True), ("no answer within 0.3 s", True)]
    result = send_alert(make_runtime(tmp_path, server, GLOBAL_HOOK), train_failure())
    assert result["webhooks"] == {GLOBAL_HOOK: "delivered"}
    assert len(webhooks.urls) == 3
    assert webhooks.sleeps == [0.5, 1.0]


def test_a_webhook_that_keeps_failing_is_given_up_after_three_attempts(
    tmp_path: Path,
    server: fakeredis.FakeServer,
    webhooks: FakeWebhooks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    webhooks.script = [("HTTP 500", True)] * 5
    result = send_alert(make_runtime(tmp_path, server, GLOBAL_HOOK), train_failure())
    assert result["webhooks"] == {GLOBAL_HOOK: "failed: HTTP 500 after 3 attempts"}
    assert len(webhooks.urls) == alerts.WEBHOOK_ATTEMPTS == 3
    assert f"not delivered to webhook {GLOBAL_HOOK}: failed: HTTP 500" in caplog.text


def test_a_4xx_is_not_retried(
    tmp_path: Path, server: fakeredis.FakeServer, webhooks: FakeWebhooks
) -> None:
    webhooks.script = [("HTTP 400", False)]
    result = send_alert(make_runtime(tmp_path, server, GLOBAL_HOOK), train_failure())
    assert result["webhooks"] == {GLOBAL_HOOK: "failed: HTTP 400"}
    assert len(webhooks.urls) == 1 and webhooks.sleeps == []


def test_the_global_and_the_org_webhook_each_get_the_alert_and_an_equal_one_only_once(
    tmp_path: Path, server: fakeredis.FakeServer, webhooks: FakeWebhooks
) -> None:
    rt = make_runtime(tmp_path, server, GLOBAL_HOOK)
    both = send_alert(rt, train_failure(), org_webhook_url=ORG_HOOK)
    assert both["webhooks"] == {GLOBAL_HOOK: "delivered", ORG_HOOK: "delivered"}
    assert webhooks.urls == [GLOBAL_HOOK, ORG_HOOK]
    webhooks.urls.clear()
    send_alert(rt, train_failure(), org_webhook_url=GLOBAL_HOOK)
    assert webhooks.urls == [GLOBAL_HOOK]


def test_credentials_in_a_webhook_url_become_basic_auth_and_leave_the_url() -> None:
    request = alerts._request("https://ops:p%40ss@hooks.example.com/x", b"{}")
    assert request.full_url == "https://hooks.example.com/x"
    assert request.get_header("Authorization") == "Basic b3BzOnBAc3M="  # ops:p@ss
    assert request.get_header("User-agent") == "training-service-alerts"
    assert request.get_header("Content-type") == "application/json"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (GLOBAL_HOOK, GLOBAL_HOOK),
        ("https://ops:pw@hooks.example.com/x", "https://***@hooks.example.com/x"),
        (
            "https://h.example.com/hook?token=abc&team=ml",
            "https://h.example.com/hook?token=***&team=***",
        ),
        (
            "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX",
            "https://hooks.slack.com/services/T0001/B0001/***",
        ),
    ],
)
def test_a_webhook_url_in_logs_shows_no_credentials_query_values_or_path_tokens(
    url: str, shown: str
) -> None:
    assert display_url(url) == shown


def test_an_organization_can_name_its_own_webhook_and_it_survives_the_stored_round_trip() -> None:
    org = parse_org_config({**BASE, "alerts": {"webhookUrl": ORG_HOOK}}, "acme-corp")
    assert org.alert_webhook_url == ORG_HOOK
    public = org.public_dict()
    assert public["alerts"] == {"webhookUrl": ORG_HOOK}
    # The registry stores public_dict() as the config and parses it back on every run.
    public.pop("organizationId")
    assert parse_org_config(public, "acme-corp").alert_webhook_url == ORG_HOOK


def test_an_organization_without_alerts_has_no_webhook_and_an_unchanged_public_form() -> None:
    sections: list[dict[str, object]] = [{}, {"alerts": {}}, {"alerts": None}]
    for alerts_section in sections:
        org = parse_org_config({**BASE, **alerts_section}, "acme-corp")
        assert org.alert_webhook_url is None
        assert "alerts" not in org.public_dict()


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ({"webhookUrl": "ftp://files.example.com/x"}, "alerts.webhookUrl", "http://"),
        ({"webhookUrl": "hooks.example.com/x"}, "alerts.webhookUrl", "http://"),
        ({"webhookUrl": "https:///no-host"}, "alerts.webhookUrl", "with a host"),
        ({"webhookUrl": "https://h.example.com:99999/x"}, "alerts.webhookUrl", "not a URL"),
        ({"webhookUrl": 42}, "alerts.webhookUrl", "string"),
        ({"webhookUrl": "https://ops:hunter2@h.example.com/x"}, "alerts.webhookUrl", "password"),
        ({"webhookUrl": ORG_HOOK, "channel": "#ml"}, "alerts.channel", "unknown key"),
        ("https://h.example.com/x", "alerts", "JSON object"),
    ],
)
def test_a_bad_alerts_section_is_refused_naming_the_field(
    section: object, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_org_config({**BASE, "alerts": section}, "acme-corp")
    assert err.value.field == field
    assert words in err.value.problem
    assert "hunter2" not in str(err.value)
