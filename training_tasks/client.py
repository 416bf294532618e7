"""The client other services use: `from training_tasks.client import TrainingClient`.

It lives in `training_tasks.messaging.client` and needs nothing but Celery."""

from training_tasks.messaging.client import REQUESTS_QUEUE, SUBMIT_TASK, TrainingClient

__all__ = ["REQUESTS_QUEUE", "SUBMIT_TASK", "TrainingClient"]
