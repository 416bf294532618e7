"""Celery's Redis result backend, with every secret masked out of what it stores.

A task's result rests in Redis until it expires (`result_expires`), so nothing secret may be in
it. Results carry no task arguments (`result_extended` is off), but a refusal's message and its
traceback may echo what a client sent: a SCADA URL pasted into the wrong field, a
`password=...` pair. Here the stored value (a result, or an exception's type, message and
module) and the traceback text pass through `training_tasks.redaction.masked` first, the rules
that task arguments shown in Flower follow. `celeryconfig.result_backend` names this class.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

from training_tasks.redaction import mask_text, masked


class MaskingRedisBackend(RedisBackend):
    """The Redis result backend; results, exception messages and tracebacks stored masked."""

    def encode_result(self, result: Any, state: str) -> Any:
        """The value Celery would store for `result`, with secrets masked."""
        return masked(super().encode_result(result, state))

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store a task's state and result; a traceback's text is masked like the result."""
        shown = mask_text(traceback) if isinstance(traceback, str) else traceback
        return super().store_result(task_id, result, state, shown, request, **kwargs)
