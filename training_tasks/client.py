"""The client other services use: `from training_tasks.client import TrainingClient`.

It lives in `training_tasks.messaging.client` and needs nothing but Celery."""

from training_tasks.messaging.client import TrainingClient

__all__ = ["TrainingClient"]
