"""The Python API: `TrainingService` (register, train, inspect, deploy, roll back, clean up)
and its schedule part. Imports `messaging` and every layer below it."""

from training_tasks.service.api import TrainingService

__all__ = ["TrainingService"]
