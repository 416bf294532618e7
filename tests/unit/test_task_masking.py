"""Task arguments as Flower and the logs show them never hold a secret; the real ones are intact."""

from __future__ import annotations

import copy

import pytest
from celery.contrib.testing.mocks import TaskMessage
from celery.worker.request import Request

from training_tasks.messaging.app import app
from training_tasks.messaging.task_masking import (
    mask_received_request,
    mask_task_headers,
    masked_repr,
)
from training_tasks.redaction import MASK, is_secret_key, mask_text, masked

SECRET = "hunter2"
REQUEST = {
    "organizationId": "acme-corp",
    "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"},
    "featureColumns": ["temperature", "pressure"],
    "scadaDbConfig": {"url": f"postgresql+psycopg://scada:{SECRET}@db.plant:5432/plant"},
    "notes": [f"copied from redis://:{SECRET}@cache:6379/0", {"apiKey": SECRET}],
    "auth": {"user": "ops", "password": SECRET},
}


@pytest.mark.parametrize(
    "key",
    ["password", "dbPassword", "db_passwd", "secret", "clientSecret", "token", "accessToken",
     "key", "apiKey", "api_key", "AWS_SECRET_ACCESS_KEY", "credentials", "Authorization"],
)  # fmt: skip
def test_keys_that_name_a_secret_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["organizationId", "dataRange", "featureColumns", "targetColumn", "hyperparameters",
     "numLeaves", "validationSplit", "trigger", "monkey", "keyboard", "author", "url", 3],
)  # fmt: skip
def test_ordinary_keys_are_left_alone(key: object) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("host=h user=u password=hunter2 dbname=x", "host=h user=u password=*** dbname=x"),
        ("host=h password='hunter 2' port=5", "host=h password=*** port=5"),
        (
            "https://h/export?access_token=hunter2&page=2",
            "https://h/export?access_token=***&page=2",
        ),
        ("sqlite:///ml/training.db", "sqlite:///ml/training.db"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("schedule 2026-01-01T02:00:00Z", "schedule 2026-01-01T02:00:00Z"),
    ],
)
def test_passwords_inside_strings_are_masked_and_the_rest_kept(text: str, shown: str) -> None:
    assert mask_text(text) == shown


def test_a_request_with_secrets_in_it_is_shown_without_them_but_otherwise_as_sent() -> None:
    original = copy.deepcopy(REQUEST)
    shown = masked(REQUEST)
    assert SECRET not in repr(shown)
    assert original == REQUEST, "the real arguments must not change"
    assert shown["dataRange"] == REQUEST["dataRange"]
    assert shown["featureColumns"] == ["temperature", "pressure"]
    assert shown["scadaDbConfig"]["url"] == "postgresql+psycopg://scada:***@db.plant:5432/plant"
    assert shown["notes"] == ["copied from redis://:***@cache:6379/0", {"apiKey": MASK}]
    assert shown["auth"] == MASK


def test_a_very_deep_value_is_hidden_rather_than_searched() -> None:
    deep: object = SECRET
    for _ in range(100):
        deep = [deep]
    assert SECRET not in repr(masked(deep))


def test_the_repr_is_bounded_like_celerys_own() -> None:
    huge = {"rows": list(range(100_000)), "token": SECRET}
    shown = masked_repr((huge,))
    assert len(shown) <= 1100 and SECRET not in shown


def test_the_publish_hook_masks_the_headers_and_leaves_the_body() -> None:
    body = ([REQUEST], {"trigger": f"ci https://bot:{SECRET}@ci.example/job/7"}, {})
    sent = copy.deepcopy(body)
    headers = {"argsrepr": repr(body[0]), "kwargsrepr": repr(body[1]), "task": "training.submit"}
    mask_task_headers(sender="training.submit", body=body, headers=headers)
    assert SECRET not in headers["argsrepr"] and SECRET not in headers["kwargsrepr"]
    assert "acme-corp" in headers["argsrepr"] and "bot:***@ci.example" in headers["kwargsrepr"]
    assert body == sent


def test_the_publish_hook_ignores_protocol_1_messages() -> None:
    headers: dict[str, object] = {}
    mask_task_headers(body={"args": [REQUEST], "kwargs": {}}, headers=headers)
    assert headers == {}


def test_the_apps_messages_carry_masked_reprs_also_in_the_task_sent_event() -> None:
    message = app.amqp.create_task_message(
        "0f0c6a2e-0000-4000-8000-000000000001",
        "training.submit",
        [REQUEST],
        {"trigger": f"postgresql://u:{SECRET}@h/db"},
        create_sent_event=True,
        argsrepr=repr([REQUEST]),  # a caller's own repr is rebuilt too
    )
    headers, _properties, body, sent_event = message
    for shown in (
        headers["argsrepr"],
        headers["kwargsrepr"],
        sent_event["args"],
        sent_event["kwargs"],
    ):
        assert SECRET not in shown
    assert "acme-corp" in sent_event["args"]
    assert body[0] == [REQUEST], "the task still receives the real arguments"


def test_the_worker_masks_a_message_from_a_client_that_sent_plain_reprs() -> None:
    import training_tasks.messaging.tasks  # noqa: F401 - registers training.submit

    message = TaskMessage(
        "training.submit", args=[REQUEST], kwargs={"trigger": "api"}, argsrepr=repr([REQUEST])
    )
    request = Request(message, app=app)
    assert SECRET in request.argsrepr
    mask_received_request(request=request)
    assert SECRET not in request.argsrepr
    assert SECRET not in request.info(safe=True)["args"]
    assert SECRET not in request.request_dict["argsrepr"]
    assert request.args == [REQUEST]
