"""Celery: the app, the tasks (thin wrappers around `pipeline`), the masking of task arguments,
the bounded task request, the broker transport and the broker as the CLI sees it (`broker`). The
only package of `training_tasks` that imports Celery or kombu; it may import every layer below it.
(The Celery-only client other services use lives in clients/python/training_client.)
"""
