"""A worker bootstep that follows the organization registry: one queue per organization.

A worker that serves `training.requests` (the default, without -Q) also consumes the queue
`org.<organizationId>` of every registered organization, and starts on a newly registered one
within ORG_QUEUE_POLL_S seconds, without a restart; on Redis at once, when the ready list shows
a message for a queue it does not follow yet (training_tasks/messaging/ready_queues.py). A worker
started with `-Q org.acme-corp` serves only the queues it was given.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps

from training_tasks.protocol.ids import REQUESTS_QUEUE, org_queue
from training_tasks.registry.orgs import list_org_ids
from training_tasks.runtime import get_runtime

log = logging.getLogger(__name__)
EARLY_SYNC_MIN_INTERVAL_S = 1.0  # an unknown queue's messages ask for a sync at most this often


class OrgQueueFollower(bootsteps.StartStopStep):
    """Adds a consumer for each organization's queue as organizations appear."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None
        self._early_sync_at = 0.0

    def start(self, consumer: Any) -> None:
        if REQUESTS_QUEUE not in consumer.app.amqp.queues.consume_from:
            log.info("serving only the queues given with -Q; not following new organizations")
            return
        interval_s = get_runtime().settings.org_queue_poll_s
        self._sync(consumer)
        self.timer_entry = consumer.timer.call_repeatedly(interval_s, self._sync, (consumer,))

    def stop(self, consumer: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def _sync(self, consumer: Any) -> None:
        self._listen_for_unknown_queues(consumer)
        try:
            org_ids = list_org_ids(get_runtime().engine)
        except Exception:  # the database may be briefly away; the next tick tries again
            log.warning("could not read the organization registry", exc_info=True)
            return
        for org_id in org_ids:
            queue = org_queue(org_id)
            if not consumer.task_consumer.consuming_from(queue):
                consumer.add_task_queue(queue)

    def _listen_for_unknown_queues(self, consumer: Any) -> None:
        """Ask the broker channel (a new one after each reconnect) to report unknown queues."""
        channel = getattr(consumer.task_consumer, "channel", None)
        if channel is not None and hasattr(channel, "on_unfollowed_org_queue"):
            channel.on_unfollowed_org_queue = lambda queue: self._sync_soon(consumer)

    def _sync_soon(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._early_sync_at >= EARLY_SYNC_MIN_INTERVAL_S:
            self._early_sync_at = now
            consumer.timer.call_after(0, self._sync, (consumer,))
