"""RabbitMQ as the broker: every task queue is a quorum queue, whoever declares it first.

RabbitMQ refuses a queue declared again with other arguments, so the client that sends a request
before any worker runs, the service sending a run's stages, the worker's own queues, the
organization queue it follows at runtime and one added with `celery control add_consumer` must
all agree. A worker started while its queues already hold messages serves them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.chaos import RANGE, RUN_TIMEOUT_S, Chaos
from tests.support.processes import broker_url_of, celery_worker, sender, wait_for
from training_tasks.client import TrainingClient
from training_tasks.demo import scada

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True),
]


def listed(broker_url: str, what: str) -> dict[str, str]:
    """Names and types of the queues or exchanges of the URL's virtual host, from rabbitmqctl."""
    vhost = broker_url.rsplit("/", 1)[1]
    done = subprocess.run(
        ["rabbitmqctl", f"list_{what}", "-p", vhost, "name", "type", "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {entry["name"]: entry["type"] for entry in json.loads(done.stdout)}


def queue_types(broker_url: str) -> dict[str, str]:
    return listed(broker_url, "queues")


def test_runs_queued_before_the_worker_started_are_served_from_quorum_queues(chaos: Chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    chaos.register("globex", scada.GLOBEX_LAYOUT)
    broker_url = broker_url_of(chaos.env)
    with TrainingClient(broker_url, result_url=chaos.env["REDIS_URL"]) as client:
        submitted = client.submit({"organizationId": "acme-corp", "dataRange": RANGE})
        waiting = chaos.service.train_model("globex", {"dataRange": RANGE}, wait=False)
        assert queue_types(broker_url) == {"training.requests": "quorum", "org.globex": "quorum"}

        with celery_worker(chaos.env, chaos.tmp) as worker:
            acme = client.wait(submitted.get(timeout=60)["runId"], timeout_s=RUN_TIMEOUT_S)
            globex = waiting.wait(timeout_s=RUN_TIMEOUT_S)
            assert (acme["status"], globex["status"]) == ("succeeded", "succeeded"), (
                worker.log_tail()
            )
            chaos.register("initech", scada.ACME_LAYOUT)  # followed at runtime
            control = sender(chaos.env)
            control.control.add_consumer("org.added", destination=[worker.name], reply=True)
            control.close()
            types = wait_for(
                lambda: (t := queue_types(broker_url)).keys() >= {"org.initech", "org.added"} and t,
                30,
                "the worker to declare the queues it was given at runtime",
            )
            log = worker.log_tail(5000)
    assert "PRECONDITION_FAILED" not in log, log
    # The service sent a run before any worker ran, from a process whose own broker is Redis:
    # the event exchange has RabbitMQ's type, so the workers' task events (Flower) get through.
    assert listed(broker_url, "exchanges")["celeryev"] == "topic"
    task_queues = {name: kind for name, kind in types.items() if name.startswith(("org.", "tr"))}
    assert task_queues == {
        name: "quorum"
        for name in ("training.requests", "org.acme-corp", "org.globex", "org.initech", "org.added")
    }
