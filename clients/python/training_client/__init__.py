"""The training service's Python client: submit a run, read its status, wait for its end.

It needs nothing but Celery (and redis-py), and imports nothing of the service itself, so any
service can embed it; the service's own wheel carries it too, also as `training_tasks.client`.
"""

from training_client.client import (
    FINISHED_STATUSES,
    REQUESTS_QUEUE,
    STATUS_TASK,
    SUBMIT_TASK,
    TrainingClient,
)
from training_client.errors import (
    InvalidRequestError,
    RunNotFoundError,
    RunTimeoutError,
    ServiceError,
)

__all__ = [
    "FINISHED_STATUSES",
    "REQUESTS_QUEUE",
    "STATUS_TASK",
    "SUBMIT_TASK",
    "InvalidRequestError",
    "RunNotFoundError",
    "RunTimeoutError",
    "ServiceError",
    "TrainingClient",
]
