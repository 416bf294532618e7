"""The worker's task request, made safe against task arguments nested hundreds of levels deep.

The worker's main process decodes a message's arguments and pickles them, with the request, to
the pool child that runs the task. Pickling recurses once per nesting level, so arguments that
are still decodable (a list nested 900 deep, which any Celery client can send) raised
RecursionError in the main process: "Unrecoverable error", and the worker exited, as did the
next worker to receive the same message. The child decodes the arguments again from the message
body anyway, so the main process keeps a short placeholder of arguments that deep and the task
itself refuses them (`training.submit` with a ConfigError naming the field).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.worker.request import Request

from training_tasks.errors import ConfigError
from training_tasks.fields import check_nesting

# Far deeper than any argument of this service's tasks, far below Python's recursion limit.
MAX_ARGUMENT_DEPTH = 100
PLACEHOLDER = "(arguments nested too deep to show)"


class BoundedRequest(Request):
    """A task request whose own copy of deeply nested arguments is replaced by a placeholder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = self._request_dict
        if _nests_deeper([given.get("args"), given.get("kwargs")], MAX_ARGUMENT_DEPTH):
            given["args"], given["kwargs"] = [PLACEHOLDER], {}
            self._args, self._kwargs = given["args"], given["kwargs"]
            if self._decoded:  # a protocol 1 message: the child takes these very arguments
                embed: Any = self.body[2]
                self._body = (given["args"], given["kwargs"], embed)


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether lists, tuples or dicts in `value` nest deeper than `limit` (without recursing)."""
    try:
        check_nesting(value, "arguments", limit)
    except ConfigError:
        return True
    return False


class BoundedTask(Task):
    """The base of the service's tasks (`task_cls` of the app): requests are BoundedRequest."""

    Request = "training_tasks.messaging.bounded_request:BoundedRequest"
