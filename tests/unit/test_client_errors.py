"""A refused status request reaches the client's caller as one of its own errors, message intact.

Celery stores a failed task's error as `{"exc_type", "exc_message", "exc_module"}` and rebuilds
it on the client: as the service's own class where that is loaded, as a stand-in class of the
same name where it is not (a client installed without the service). Either way the caller gets
the same error class and the message the service wrote.
"""

from __future__ import annotations

import pytest
from celery import Celery

from training_client import InvalidRequestError, RunNotFoundError, ServiceError
from training_client.errors import from_task_failure
from training_tasks import errors as service_errors

MISSING = "training run " + "0" * 32 + " does not exist in this service's training log"


def rebuilt(exc_type: str, message: list[str], module: str) -> BaseException:
    """The exception a Celery client rebuilds from a stored failure, as Celery does it."""
    app = Celery("rebuild", backend="cache+memory://")
    stored = {"exc_type": exc_type, "exc_message": message, "exc_module": module}
    return app.backend.exception_to_python(stored)


@pytest.mark.parametrize("module", ["training_tasks.errors", "not_loaded_here.errors"])
def test_an_unknown_run_is_a_run_not_found_error_with_the_services_message(module: str) -> None:
    failure = rebuilt("NotFoundError", [MISSING], module)
    assert isinstance(failure, service_errors.NotFoundError) == (module == service_errors.__name__)
    error = from_task_failure(failure)
    assert isinstance(error, RunNotFoundError) and isinstance(error, LookupError)
    assert str(error) == MISSING and error.kind == "NotFoundError"


@pytest.mark.parametrize("module", ["training_tasks.errors", "not_loaded_here.errors"])
def test_a_malformed_run_id_is_an_invalid_request_naming_the_field(module: str) -> None:
    problem = "'acme' is not a run id (32 lowercase hex characters)"
    error = from_task_failure(rebuilt("ConfigError", ["runId", problem], module))
    assert isinstance(error, InvalidRequestError) and isinstance(error, ValueError)
    assert str(error) == f"runId: {problem}"


def test_any_other_failure_is_a_service_error_that_keeps_its_kind() -> None:
    error = from_task_failure(rebuilt("DatabaseError", ["the database is not answering"], "x"))
    assert type(error) is ServiceError
    assert (error.kind, str(error)) == ("DatabaseError", "the database is not answering")
