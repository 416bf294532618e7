"""The Celery app: settings from `celeryconfig`, the pipeline tasks and the worker hooks."""

from celery import Celery

# BoundedTask: arguments nested too deep to pickle to a pool child do not end the worker.
app = Celery("training_tasks", task_cls="training_tasks.messaging.bounded_request:BoundedTask")
app.amqp_cls = "training_tasks.messaging.task_masking:MaskingAMQP"  # secrets masked in task args
app.config_from_object("celeryconfig")
# What a worker imports as it starts, before its bootsteps are built: the tasks, and the hooks
# that give it per-process handles, the schema check, reconcile, the organization queues and the
# reaper. The hooks sit above this layer (they use the tasks), so the app names them, never imports.
app.conf.include = ["training_tasks.messaging.tasks", "workers.worker_hooks"]
