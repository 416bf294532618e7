"""BROKER_URL: RabbitMQ (or a Redis of its own) as the broker, Redis for everything else."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training_tasks.client import TrainingClient
from training_tasks.config.settings import Settings
from training_tasks.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://redis.internal:6379/2"
RABBIT = "amqp://training:rabbit-secret@rabbitmq.internal:5672/training"


def celery_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """celeryconfig's settings as a process with environment `env` gets them."""
    for name in ("REDIS_URL", "BROKER_URL", "BROKER_VISIBILITY_TIMEOUT_S", "TRAINING_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "celeryconfig.py"))


def test_without_broker_url_the_messages_go_through_redis_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = celery_settings(monkeypatch, REDIS_URL=REDIS)
    assert Settings.from_env({"REDIS_URL": REDIS}).broker_url == REDIS
    assert config["broker_url"] == REDIS
    assert config["broker_transport"] == "training_tasks.messaging.broker_transport:Transport"
    assert config["broker_transport_options"]["visibility_timeout"] == 7200 + 3600
    assert config["result_backend"].endswith(f"+{REDIS}")
    assert config["task_acks_late"] is True
    assert config["broker_channel_error_retry"] is False


def test_with_rabbitmq_as_the_broker_results_stay_in_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = celery_settings(monkeypatch, REDIS_URL=REDIS, BROKER_URL=RABBIT)
    settings = Settings.from_env({"REDIS_URL": REDIS, "BROKER_URL": RABBIT})
    assert (settings.broker_url, settings.redis_url) == (RABBIT, REDIS)
    assert config["broker_url"] == RABBIT
    assert config["result_backend"].endswith(f"+{REDIS}")
    # Redis's own options are not given to RabbitMQ's transport.
    assert config["broker_transport"] == "amqp"
    assert config["broker_transport_options"] == {"confirm_publish": True}


def test_on_rabbitmq_a_stage_is_acknowledged_as_it_starts_and_queues_are_quorum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = celery_settings(monkeypatch, BROKER_URL=RABBIT)
    assert config["task_acks_late"] is False
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_channel_error_retry"] is True
    assert config["task_default_queue_type"] == config["task_create_missing_queue_type"]
    assert config["task_default_queue_type"] == "quorum"
    assert "task_queue_max_priority" not in config  # quorum queues have no priorities


def test_a_redis_broker_of_its_own_keeps_the_redis_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = celery_settings(monkeypatch, REDIS_URL=REDIS, BROKER_URL="rediss://queue:6380/0")
    assert config["broker_url"] == "rediss://queue:6380/0"
    assert config["broker_transport"].endswith("broker_transport:Transport")
    assert config["task_acks_late"] is True
    assert config["result_backend"].endswith(f"+{REDIS}")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://user:web-secret@host/", "scheme 'http' is not supported"),
        ("sqs://key:sqs-secret@", "scheme 'sqs' is not supported"),
        ("guest:bare-secret@rabbitmq:5672", "scheme 'guest' is not supported"),
        ("amqp://user:port-secret@rabbitmq:port/training", "the port of"),
        ("redis://:db-secret@queue:6379/zero", "database number 'zero'"),
    ],
)
def test_a_bad_broker_url_is_refused_naming_it_without_its_password(
    value: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"BROKER_URL": value})
    assert err.value.field == "BROKER_URL"
    assert problem in str(err.value)
    assert "secret" not in str(err.value)
    if "not supported" in problem:
        assert "redis://, rediss://, amqp://, amqps://" in str(err.value)


def test_celeryconfig_alone_refuses_a_bad_broker_url_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import celeryconfig"],
        env={"PATH": os.defpath, "BROKER_URL": "kafka://broker:9092"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "SettingsError: BROKER_URL: scheme 'kafka' is not supported" in done.stderr


def test_the_python_client_on_rabbitmq_needs_the_redis_that_holds_results() -> None:
    with pytest.raises(ValueError, match="result_url="):
        TrainingClient(RABBIT)
    with TrainingClient(RABBIT, result_url=REDIS) as client:
        assert client.app.conf.broker_url == RABBIT
        assert client.app.conf.result_backend == REDIS
        # The service's queues are quorum queues; the client declares them the same way.
        assert client.app.amqp.queues["training.requests"].queue_arguments == {
            "x-queue-type": "quorum"
        }


def test_a_queue_a_running_worker_adds_by_name_is_declared_as_a_quorum_queue() -> None:
    from celery import Celery

    app = Celery("probe", amqp="training_tasks.messaging.task_masking:MaskingAMQP")
    app.config_from_object("celeryconfig")  # the service's settings, on an app of its own
    # What Celery's add_task_queue does for a queue it has not routed to yet (the organization
    # queues a worker follows, `celery control add_consumer`).
    added = app.amqp.queues.select_add(
        "org.added-at-runtime", exchange="org.added-at-runtime", exchange_type="direct"
    )
    assert added.queue_arguments == {"x-queue-type": "quorum"}
    assert app.amqp.queues["org.routed-to"].queue_arguments == {"x-queue-type": "quorum"}


def test_trainctl_names_broker_url_when_rabbitmq_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu.exceptions import OperationalError

    from training_tasks.cli.common import unavailable

    monkeypatch.setenv("BROKER_URL", RABBIT)
    said = unavailable(OperationalError("[Errno 111] Connection refused"))
    assert said is not None
    assert said.startswith("the broker at amqp://training:***@rabbitmq.internal:5672/training")
    assert "(BROKER_URL) did not answer" in said and "point BROKER_URL at it" in said
    assert "rabbit-secret" not in said
