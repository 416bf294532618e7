"""The Redis broker transport, with two changes that keep a worker alive.

1. An item on a queue that is not a Celery message (not JSON, or not the envelope kombu expects)
   is logged and dropped instead of ending the worker. kombu's Redis channel pops the item with
   BRPOP and then decodes it; a decode error there is an "Unrecoverable error" for the whole
   worker, so anyone able to push one byte string onto a queue could stop every worker that
   reads it. The item is already off the queue when decoding fails.

2. A channel remembers where its Redis server is. When the connection drops (Redis restarted),
   Celery's consumer first calls `Connection.collect()`: it closes the channel, which fails
   before the channel counts as closed (close first reads the reply of the pending BRPOP, and
   the server is gone), and then detaches the transport from its connection
   (`transport.client = None`). Then it calls `Connection.close()`, which closes the same channel
   again. With a task running, that close puts its unacknowledged message back, needs a new Redis
   connection pool, and kombu builds one from `self.connection.client.hostname`: AttributeError
   on None, which is not a connection error, so the worker's main process exits ("Unrecoverable
   error"). Acknowledging that task when it ends goes through the same old channel. Here the
   channel keeps the parameters it connected with, so the restore and the late ack reach Redis
   (or fail with a connection error, which Celery handles) and the worker reconnects.

`Connection` (the app's broker connections, see task_masking.MaskingAMQP) names this transport
`redis` in URLs and connection info. Tools that pick their Redis support by the URL's scheme,
such as Flower's Broker tab and its `/api/queues/length`, would otherwise see the scheme
`training_tasks.messaging.broker_transport:Transport` and refuse it as an unknown broker.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu
from kombu.transport import redis

log = logging.getLogger(__name__)


class Channel(redis.Channel):
    """A Redis channel that survives undecodable queue items and a broker restart."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._known_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)
        # Both kinds of pool may first be needed after the transport lost its connection info
        # (the restore at close uses the synchronous one): remember both while it is there.
        for asynchronous in (False, True):
            self._connparams(asynchronous=asynchronous)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        known = self._known_connparams.get(asynchronous)
        if known is not None and self.connection.client is None:
            return dict(known)
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        self._known_connparams[asynchronous] = dict(params)
        return params

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            log.error(
                "dropped an item from a queue that is not a Celery message (%s: %s); check "
                "what writes to the broker",
                type(exc).__name__,
                str(exc)[:200],
            )
            return True


class Transport(redis.Transport):
    """`broker_transport` of the service (see celeryconfig)."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"


class Connection(kombu.Connection):
    """A broker connection whose URL and info say `redis` for this module's transport."""

    # kombu's own table of display names (it shows `pyamqp` as `amqp` the same way); only
    # `as_uri()` and `info()` read it, so the connection still uses the Transport above.
    resolve_aliases = {**kombu.Connection.resolve_aliases, TRANSPORT: "redis"}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the real transport, not its display name."""
        return self.__class__, tuple(dict(self._info(resolve=False)).values()), None
