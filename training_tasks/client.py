"""The client other services use: `from training_tasks.client import TrainingClient`.

It is the package `training_client` (clients/python, also a distribution of its own,
training-service-client), which needs nothing but Celery; the service's wheel carries it.
"""

from training_client import (
    FINISHED_STATUSES,
    REQUESTS_QUEUE,
    STATUS_TASK,
    SUBMIT_TASK,
    InvalidRequestError,
    RunNotFoundError,
    RunTimeoutError,
    ServiceError,
    TrainingClient,
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
