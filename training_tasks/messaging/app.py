"""The Celery app: settings from `celeryconfig`, the pipeline tasks and the worker hooks."""

from celery import Celery

# BoundedTask: arguments nested too deep to pickle to a pool child do not end the worker.
app = Celery("training_tasks", task_cls="training_tasks.messaging.bounded_request:BoundedTask")
app.amqp_cls = (
    "training_tasks.messaging.task_masking:MaskingAMQP"  # secrets masked in shown task arguments
)
app.config_from_object("celeryconfig")
app.conf.include = ["training_tasks.messaging.tasks"]

from workers.worker_hooks import install  # noqa: E402 - the hooks need the app object

install(app)
