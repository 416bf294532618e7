"""The Redis broker transport, with one change: an item on a queue that is not a Celery message
(not JSON, or not the envelope kombu expects) is logged and dropped instead of ending the worker.

kombu's Redis channel pops the item with BRPOP and then decodes it; a decode error there is an
"Unrecoverable error" for the whole worker, so anyone able to push one byte string onto a queue
could stop every worker that reads it. The item is already off the queue when decoding fails.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger(__name__)


class Channel(redis.Channel):
    """A Redis channel that survives undecodable queue items."""

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
