"""The broker transport and its options for each kind of broker URL: Redis or RabbitMQ.

celeryconfig applies them to the broker of the process's environment. A sender handed another
broker URL (`enqueue_chain(broker_url=...)`: an embedding application's own settings, tests)
connects with the ones of that URL's kind, so a process configured for Redis can send to
RabbitMQ and the other way round. Neither Celery nor kombu is imported here: celeryconfig
imports this module and must stay free of side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from training_tasks.config.settings import is_amqp_url

# kombu's Redis transport, except that an item on a queue that is not a Celery message is dropped
# with a log line instead of stopping the worker, and that the worker survives Redis being
# restarted under it (training_tasks/messaging/broker_transport.py).
REDIS_TRANSPORT = "training_tasks.messaging.broker_transport:Transport"


@dataclass(frozen=True)
class BrokerTransport:
    """Celery's `broker_transport` and `broker_transport_options` for one broker URL."""

    transport: str
    options: dict[str, Any] = field(default_factory=dict)


def transport_for(url: str, visibility_timeout_s: int | None = None) -> BrokerTransport:
    """The transport of the broker `url` names; `visibility_timeout_s` matters to Redis only."""
    if is_amqp_url(url):
        # basic.publish is asynchronous: a message RabbitMQ refuses, or loses with the
        # connection, would vanish without an error. With confirms a publish returns once
        # RabbitMQ has taken the message (on a quorum queue: once a majority stored it), or
        # raises, and the sender's retry policy takes over. The transport is the URL's own
        # scheme (amqps is kombu's TLS transport).
        return BrokerTransport(urlparse(url).scheme, {"confirm_publish": True})
    options: dict[str, Any] = {
        # Each attempt to reach a Redis that is down or unreachable gives up after this, so the
        # worker's reconnect loop keeps going (a host that drops packets would otherwise hold one
        # attempt for the kernel's TCP timeout, minutes).
        "socket_connect_timeout": 5,
        # A command sent to a Redis that vanished without closing the connection (failover, a
        # dead host) fails after this instead of waiting for ever. Kept well above BRPOP's own
        # 1 s wait.
        "socket_timeout": 15,
        # The consumer's BRPOP and pub/sub connections are checked this often (kombu's default,
        # written out): a half-open one is dropped and reconnected within about a minute.
        "health_check_interval": 25,
        # retry_on_timeout stays off: a timed-out publish retried by redis-py could be sent
        # twice, and kombu only batches publishes when it is off.
    }
    if visibility_timeout_s is not None:
        options["visibility_timeout"] = visibility_timeout_s
    return BrokerTransport(REDIS_TRANSPORT, options)
