"""The Redis broker transport: organization queues through a ready list, and two changes that
keep a worker alive.

0. Messages for `org.*` queues go through the ready list of `ready_queues`: a worker that
   follows every organization (it consumes `training.requests`, see workers/org_queues.py) waits
   on a doorbell and its few other queues instead of a BRPOP naming every organization's queue,
   and takes the organizations' messages round-robin. A worker started with `-Q org.a,org.b`
   keeps kombu's BRPOP over its own queues. Priorities are not used (`priority_steps` [0]), so a
   queue's messages are in the one key named like the queue.

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
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

import kombu
from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from training_tasks.messaging import ready_queues
from training_tasks.protocol.ids import REQUESTS_QUEUE

log = logging.getLogger(__name__)


SWEEP_INTERVAL_S = 5.0  # how often a worker looks for messages that skipped the ready list
PUT_BACK_MAX = 20  # queues not followed here (yet) passed over in one wake-up


class Channel(redis.Channel):
    """A Redis channel with organization queues on a ready list, that survives undecodable queue
    items and a broker restart."""

    priority_steps = [0]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._known_connparams: dict[bool, dict[str, Any]] = {}
        self._org_queues: set[str] = set()
        self._other_queues: list[str] = []
        self._grouped_poll = False
        self._next_sweep = 0.0
        self._passed_over: set[str] = set()  # org queues with messages, not followed here yet
        # Called with a queue name when the ready list holds messages for an organization's
        # queue this channel does not follow yet (workers/org_queues.py sets it).
        self.on_unfollowed_org_queue: Callable[[str], None] | None = None
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

    # ----- organization queues through the ready list -----

    def follows_every_org(self) -> bool:
        """Whether this channel serves organizations through the ready list (see module doc)."""
        return REQUESTS_QUEUE in self._other_queues

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        result = super().basic_consume(queue, *args, **kwargs)
        if ready_queues.is_org_queue(queue):
            self._org_queues.add(queue)
            if queue in self._passed_over:  # its messages wait in the ready list: wake up
                self._passed_over.discard(queue)
                with self.conn_or_acquire() as client:
                    client.lpush(ready_queues.DOORBELL_KEY, "1")
        return result

    def _update_queue_cycle(self) -> None:
        # kombu's queue cycle is rebuilt on every consume; ours only where a queue left.
        super()._update_queue_cycle()
        active = self.active_queues
        if len(self._org_queues) + len(self._other_queues) != len(active):
            self._org_queues = {q for q in active if ready_queues.is_org_queue(q)}
        self._other_queues = [q for q in active if not ready_queues.is_org_queue(q)]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if not ready_queues.is_org_queue(queue):
            return super()._put(queue, message, **kwargs)
        args = ready_queues.push_args(queue, dumps(message))
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            batch.add("eval", *args)
            return None
        with self.conn_or_acquire() as client:
            client.eval(*args)
        return None

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        queues = [q for q in self._lookup(exchange, routing_key) if ready_queues.is_org_queue(q)]
        if queues:
            pipe.eval(*ready_queues.mark_args(queues))

    def _brpop_start(self, timeout: float | None = None) -> None:
        self._grouped_poll = self.follows_every_org()
        if not self._grouped_poll:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        keys = [*self._other_queues, ready_queues.DOORBELL_KEY, timeout or 0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        command = ["BRPOP", *keys]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self.client.connection.send_command(*command)
        return None

    def _read_grouped(self, **options: Any) -> bool:
        """Read the BRPOP reply; on the doorbell or a quiet second, take the next org's message."""
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if reply and bytes_to_str(reply[0]) != ready_queues.DOORBELL_KEY:
                dest = bytes_to_str(reply[0]).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self.connection._deliver(loads(bytes_to_str(reply[1])), dest)
                return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        return self._deliver_next_org_message()

    def _deliver_next_org_message(self) -> bool:
        with self.conn_or_acquire() as client:
            self._maybe_sweep(client)
            for _ in range(PUT_BACK_MAX):
                found = ready_queues.pick(client)
                if found is None:
                    break
                queue, item = found
                if queue in self._org_queues:
                    self.connection._deliver(loads(bytes_to_str(item)), queue)
                    return True
                # Not followed here yet (a new organization): the follower adds it shortly.
                client.eval(*ready_queues.push_back_args(queue, bytes_to_str(item)))
                if len(self._passed_over) < PUT_BACK_MAX * 50:
                    self._passed_over.add(queue)
                if self.on_unfollowed_org_queue is not None:
                    self.on_unfollowed_org_queue(queue)
        raise Empty()

    def _maybe_sweep(self, client: Any) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            marked = ready_queues.sweep(client, sorted(self._org_queues))
            if marked:
                log.info("%d organization queues held messages outside the ready list", marked)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            if self._grouped_poll:
                return self._read_grouped(**options)
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
