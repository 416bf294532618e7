"""Celery: the app, the tasks (thin wrappers around `pipeline`), the masking of task arguments,
the bounded task request, the broker transport, the broker as the CLI sees it (`broker`) and the
Celery-only client. The only package of
`training_tasks` that imports Celery or kombu; it may import every layer below it.
"""
