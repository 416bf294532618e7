"""The client other services use: `from training_tasks.client import TrainingClient`.

It is the package `training_client` (clients/python, also a distribution of its own,
training-service-client), which needs nothing but Celery; the service's wheel carries it.
"""

import training_client
from training_client import *  # noqa: F403 - this module is that package under the service's name

__all__ = training_client.__all__
