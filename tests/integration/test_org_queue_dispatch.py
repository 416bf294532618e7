"""Organization queues on Redis go through the ready list: a worker that follows every
organization waits on one doorbell, serves organizations in turn, and loses no message."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from kombu import Connection, Consumer, Exchange, Producer, Queue

from tests.support.chaos import RANGE, RUN_TIMEOUT_S
from tests.support.processes import celery_worker
from training_tasks.demo import scada
from training_tasks.messaging import ready_queues
from training_tasks.messaging.broker_transport import Transport

pytestmark = pytest.mark.integration


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, "direct"), routing_key=name)


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url, transport=Transport) as conn:
        yield conn


def _send(connection: Connection, queue: str, body: str) -> None:
    with connection.channel() as channel:
        Producer(channel).publish(
            body, exchange=_queue(queue).exchange, routing_key=queue, declare=[_queue(queue)]
        )


def _drain(connection: Connection, queues: list[str], count: int, *, ack: bool = True) -> list[Any]:
    """Consume `count` messages from `queues` on one channel; returns (queue, body) pairs."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((message.delivery_info["routing_key"], body))
        if ack:
            message.ack()

    with (
        connection.channel() as channel,
        Consumer(channel, [_queue(q) for q in queues], callbacks=[on_message], prefetch_count=1),
    ):
        for _ in range(count * 5):
            if len(got) >= count:
                break
            try:
                connection.drain_events(timeout=2)
            except TimeoutError:
                continue
    return got


def test_a_worker_following_every_organization_serves_them_in_turn_however_many_one_queued(
    connection: Connection,
) -> None:
    for n in range(4):
        _send(connection, "org.busy", f"busy-{n}")
    _send(connection, "org.quiet", "quiet-0")
    _send(connection, "org.other", "other-0")

    got = _drain(connection, ["training.requests", "org.busy", "org.quiet", "org.other"], 6)

    bodies = [body for _, body in got]
    assert sorted(bodies) == sorted([f"busy-{n}" for n in range(4)] + ["quiet-0", "other-0"])
    # Each organization's first message comes before the busy one's second.
    assert set(bodies[:3]) == {"busy-0", "quiet-0", "other-0"}
    assert [b for b in bodies if b.startswith("busy")] == [f"busy-{n}" for n in range(4)]


def test_the_worker_waits_on_one_doorbell_not_on_every_organization_queue(
    connection: Connection, redis_url: str
) -> None:
    queues = ["training.requests", *(f"org.o{n}" for n in range(500))]
    _send(connection, "org.o250", "hello")
    client = redis_lib.Redis.from_url(redis_url)
    brpops: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if command["command"].startswith("BRPOP"):
                    brpops.append(command["command"])
                if stop.is_set():
                    return

    ready = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)

    got = _drain(connection, queues, 1)
    stop.set()
    client.ping()  # one more command, so the monitor loop sees `stop`
    watcher.join(5)

    assert got == [("org.o250", "hello")]
    assert brpops
    # kombu would name all 500 queues in every BRPOP; here: the requests queue and the doorbell.
    assert all(len(command.split()) == 4 for command in brpops), brpops[:1]
    assert client.llen("org.o250") == 0
    assert client.llen(ready_queues.READY_KEY) == 0


def test_messages_pushed_past_the_ready_list_are_still_served(
    connection: Connection, redis_url: str
) -> None:
    _send(connection, "org.acme", "warm-up")  # declares the queue and its binding
    assert _drain(connection, ["training.requests", "org.acme"], 1) == [("org.acme", "warm-up")]
    envelope = _envelope(connection, "org.acme", "from-a-plain-producer")
    redis_lib.Redis.from_url(redis_url).lpush("org.acme", json.dumps(envelope))

    got = _drain(connection, ["training.requests", "org.acme"], 1)

    assert got == [("org.acme", "from-a-plain-producer")]


def test_a_message_for_an_organization_not_followed_yet_waits_and_is_reported(
    connection: Connection, redis_url: str
) -> None:
    _send(connection, "org.new", "for-the-new-one")
    _send(connection, "org.known", "for-the-known-one")
    reported: list[str] = []
    got: list[str] = []
    with (
        connection.channel() as channel,
        Consumer(
            channel,
            [_queue("training.requests"), _queue("org.known")],
            callbacks=[lambda body, message: (got.append(body), message.ack())],
        ),
    ):
        channel.on_unfollowed_org_queue = reported.append
        for _ in range(5):
            try:
                connection.drain_events(timeout=2)
            except TimeoutError:
                continue
            if got:
                break

    assert got == ["for-the-known-one"]
    assert "org.new" in reported
    client = redis_lib.Redis.from_url(redis_url)
    assert client.llen("org.new") == 1  # kept, for the worker once it follows the queue
    assert client.sismember(ready_queues.MEMBERS_KEY, "org.new")


def test_a_worker_given_one_organization_takes_its_messages_directly(
    connection: Connection,
) -> None:
    _send(connection, "org.acme", "a-0")
    _send(connection, "org.globex", "g-0")

    got = _drain(connection, ["org.acme"], 1)
    rest = _drain(connection, ["training.requests", "org.acme", "org.globex"], 1)

    assert got == [("org.acme", "a-0")]
    assert rest == [("org.globex", "g-0")]  # the emptied org.acme was dropped from the list


def test_an_unacknowledged_message_comes_back_through_the_ready_list(
    connection: Connection,
) -> None:
    _send(connection, "org.acme", "needs-two-tries")
    first = _drain(connection, ["training.requests", "org.acme"], 1, ack=False)
    # The channel closed with the message unacknowledged: kombu puts it back on the queue.

    again = _drain(connection, ["training.requests", "org.acme"], 1)

    assert first == again == [("org.acme", "needs-two-tries")]


def _envelope(connection: Connection, queue: str, body: str) -> dict[str, Any]:
    """The JSON kombu would store for `body` sent to `queue`."""
    with connection.channel() as channel:
        message = channel.prepare_message(json.dumps(body), content_type="application/json")
        message["properties"]["delivery_info"] = {"exchange": queue, "routing_key": queue}
        message["properties"]["delivery_tag"] = "plain-producer-1"
        return dict(message)


def test_a_new_organization_is_served_before_the_worker_polls_the_registry_again(chaos) -> None:  # type: ignore[no-untyped-def]
    env = {**chaos.env, "ORG_QUEUE_POLL_S": "120"}
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    with celery_worker(env, chaos.tmp):
        chaos.register("globex", scada.GLOBEX_LAYOUT)  # after the worker read the registry
        handle = chaos.service.train_model("globex", {"dataRange": RANGE}, wait=False)
        # Well within the 120 s poll: the ready list shows the unknown queue, the worker follows it.
        chaos.wait_stage(handle.run_id, "extract", timeout_s=20)
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)

    assert result["status"] == "succeeded"


@pytest.mark.parametrize("item", [b"not json", b"{}", b"x" * 100_000])
def test_an_item_on_an_organization_queue_that_is_not_a_message_is_dropped_and_the_next_is_served(
    connection: Connection, redis_url: str, item: bytes
) -> None:
    _send(connection, "org.acme", "warm-up")  # declares the queue and its binding
    assert _drain(connection, ["training.requests", "org.acme"], 1) == [("org.acme", "warm-up")]
    client = redis_lib.Redis.from_url(redis_url)
    client.eval(*ready_queues.push_args("org.acme", item))  # pushed through the ready list
    _send(connection, "org.acme", "after-the-junk")

    got = _drain(connection, ["training.requests", "org.acme"], 1)

    assert got == [("org.acme", "after-the-junk")]
    assert client.llen("org.acme") == 0
