"""What the client raises when the service refuses a request: one class per kind of refusal."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """The service answered with an error; `kind` is its error type, the message says what to do."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(kind, message)

    def __str__(self) -> str:
        return self.message


class RunNotFoundError(ServiceError, LookupError):
    """No run has this id in the service's training log."""


class InvalidRequestError(ServiceError, ValueError):
    """The request is malformed (a run id of the wrong shape); the message names the field."""


class RunTimeoutError(TimeoutError):
    """A run did not finish within the wait's bound (it goes on); `last_status` is where it was."""

    def __init__(self, message: str, run_id: str, last_status: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.last_status = last_status
        super().__init__(message)


# The service's error types (training_tasks.errors) the client tells apart by name: it cannot
# import them, and a Celery client in another language sees only the name too.
_BY_KIND: dict[str, type[ServiceError]] = {
    "NotFoundError": RunNotFoundError,
    "ConfigError": InvalidRequestError,
}


def from_task_failure(exc: BaseException) -> ServiceError:
    """The client's error for the exception Celery rebuilt from a failed task's stored result."""
    kind = type(exc).__name__
    # Celery rebuilds an error type it cannot import from its arguments alone; the service's
    # ConfigError keeps (field, problem) there, and shows them joined by ": ".
    message = ": ".join(str(arg) for arg in exc.args) if exc.args else kind
    return _BY_KIND.get(kind, ServiceError)(kind, message)
