"""How the app declares and consumes its task queues, also ones added to a running worker.

Celery declares a queue it creates on its own (the default queue, one a message is routed to,
one named with `-Q`) with the type `task_create_missing_queue_type` says: a quorum queue on
RabbitMQ (celeryconfig). A queue added to a running worker by name (`add_task_queue`: the
organization queues the worker follows, `celery control add_consumer`) would be declared with no
arguments instead, as a classic queue. RabbitMQ then refuses one of the two declarations
(PRECONDITION_FAILED, inequivalent arg 'x-queue-type'), whichever comes second: the worker could
not consume the queue, or no sender could send to it. `TaskQueues` gives such a queue the same
type.

A bootstep that adds a queue as the worker's consumer starts (OrgQueueFollower) asks for it to
be consumed before the event loop can take a message. On RabbitMQ a queue delivers as soon as it
is consumed, and a message that arrives with nothing to take it ends the worker ("Unrecoverable
error: Consumer does not have any callbacks"), as soon as an organization's queue holds one at
start-up or after a reconnect. `TaskConsumer` leaves that to the event loop, which consumes every
queue added so far once it handles messages.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import Queues
from kombu import Consumer


class TaskQueues(Queues):
    """Celery's queue table, where a queue added by name without arguments gets the missing type."""

    def add_compat(self, name: str, **options: Any) -> Any:
        """Add queue `name`; without queue arguments it is declared as a missing queue would be."""
        if not options.get("queue_arguments"):
            arguments = self.new_missing(name).queue_arguments
            if arguments:
                options["queue_arguments"] = dict(arguments)
        return super().add_compat(name, **options)


class TaskConsumer(Consumer):
    """The worker's task consumer: it consumes its queues once it can take their messages."""

    def consume(self, no_ack: bool | None = None) -> None:
        """Start consuming every queue added so far; before a handler is set, leave it to the loop."""
        if self.on_message is None and not self.callbacks:
            return
        super().consume(no_ack)
