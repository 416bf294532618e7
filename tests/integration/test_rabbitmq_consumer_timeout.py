"""A training longer than RabbitMQ's delivery acknowledgement timeout, on a node of the test's own.

RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer than
`consumer_timeout` (30 minutes by default) and delivers the message again. The service
acknowledges a stage's message as the stage starts on RabbitMQ (celeryconfig), so a stage of any
length holds none. Here the node's timeout is 3 s and its heartbeat 2 s, a training takes 9 s, and
the worker is started before the node answers. A second organization's message reaches the
busy worker meanwhile and waits there past the timeout: RabbitMQ closes that channel, which
must neither stop the training nor run it twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support.chaos import RANGE, RUN_TIMEOUT_S, Chaos
from tests.support.processes import start_worker, stop_group, wait_for, wait_ready
from tests.support.rabbitmq_node import RabbitNode, server_program
from training_tasks.demo import scada

pytestmark = pytest.mark.integration

CONSUMER_TIMEOUT_S = 3
TRAINING_S = 3 * CONSUMER_TIMEOUT_S


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node with a 3 s consumer_timeout and a 2 s heartbeat, not yet started."""
    program = server_program()
    if program is None:
        message = "rabbitmq-server is not installed; install it or set TEST_RABBITMQ_SERVER"
        if IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    config = {"consumer_timeout": str(CONSUMER_TIMEOUT_S * 1000), "heartbeat": "2"}
    rabbit = RabbitNode(tmp_path / "rabbitmq", program, config)
    yield rabbit
    rabbit.stop()


@pytest.fixture
def broker(node: RabbitNode) -> str:
    """The service of `chaos` sends its messages through the private node."""
    return node.url


def received(log: str, task: str, org_id: str) -> int:
    """How many times the worker log says it received `task` of `org_id`."""
    return len(re.findall(rf"Task {re.escape(task)}\[{re.escape(org_id)}\]\[[^]]+\] received", log))


def started(log: str, org_id: str, stage: str) -> int:
    """How many times a stage of `org_id` started (a copy delivered again starts none)."""
    return len(re.findall(rf"of {re.escape(org_id)}: {stage} started", log))


def test_a_training_longer_than_the_consumer_timeout_completes_once(
    chaos: Chaos, node: RabbitNode
) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.register("globex", scada.GLOBEX_LAYOUT)
    chaos.delay(TRAINING_S)
    worker = start_worker(chaos.env, chaos.tmp, concurrency=1)
    try:
        wait_for(
            lambda: "Cannot connect to amqp://" in worker.log_tail(200),
            30,
            "the worker to wait for RabbitMQ",
        )
        assert worker.proc.poll() is None, worker.log_tail()
        node.start()
        node.wait_answering()
        wait_ready(worker, node.url)

        slow = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        chaos.wait_stage(slow.run_id, "train")
        # Sent while the only pool process trains: the worker holds it, unacknowledged.
        held = chaos.service.train_model("globex", {"dataRange": RANGE}, wait=False)
        first = slow.wait(timeout_s=RUN_TIMEOUT_S)
        second = held.wait(timeout_s=RUN_TIMEOUT_S)
        log = worker.log_tail(2000)
    finally:
        stop_group(worker.proc)

    assert first["status"] == "succeeded", first["error"] or log
    assert second["status"] == "succeeded", second["error"] or log
    # RabbitMQ closed the channel over a held message: the worker reconnected, the training went
    # on, and its message, acknowledged as it started, was never delivered again.
    assert "delivery acknowledgement on channel 1 timed out" in log
    assert received(log, "training.train", "acme-corp") == 1, log
    for org_id in ("acme-corp", "globex"):
        for stage in ("extract", "train", "validate", "deploy"):
            assert started(log, org_id, stage) == 1, (org_id, stage, log)
    assert chaos.run(slow.run_id)["attempt"] == 1
    assert chaos.service.get_organization("acme-corp")["deploySequence"] == 1
    assert chaos.versions("acme-corp") == [first["version"]]
