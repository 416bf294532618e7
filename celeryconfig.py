"""Celery settings, read from the environment. Importing this module has no side effects.

Training tasks run for minutes to hours, so: acknowledge late (a task lost with its worker is
delivered again), prefetch one message at a time, and keep Redis's visibility timeout longer than
the longest allowed training, or Redis would hand a still-running task to a second worker.
"""

import os

broker_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
# kombu's Redis transport, except that an item on a queue that is not a Celery message is
# dropped with a log line instead of stopping the worker (training_tasks/broker_transport.py).
broker_transport = "training_tasks.broker_transport:Transport"
result_backend = broker_url

# The longest a training subprocess may run (TRAINING_TIMEOUT_S), plus room for extract and
# validate; a redelivered message is also harmless (the run's lease), but should be rare.
_longest_training_s = float(os.environ.get("TRAINING_TIMEOUT_S") or 7200)
_backstop_s = int(_longest_training_s + 3600)
# BROKER_VISIBILITY_TIMEOUT_S overrides it (tests use a few seconds to provoke redelivery).
visibility_timeout_s = int(float(os.environ.get("BROKER_VISIBILITY_TIMEOUT_S") or _backstop_s))
broker_transport_options = {"visibility_timeout": visibility_timeout_s}
result_backend_transport_options = {"visibility_timeout": visibility_timeout_s}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = 7 * 24 * 3600
result_extended = True

task_acks_late = True
worker_prefetch_multiplier = 1
# A worker child killed mid-task (the OOM killer, SIGKILL) acks its message: re-queueing it here
# would loop a task that kills its worker. The run's lease stops being renewed instead, and the
# reaper gives the stage another attempt, at most three in all (training_tasks/recovery.py).
task_reject_on_worker_lost = False
# A hard backstop for a stage that hangs (training has its own, shorter timeout): the child is
# killed and the run fails.
task_time_limit = _backstop_s
# The run row in the database records every stage as it starts; a STARTED state in the result
# backend would cost a Redis round trip per stage for nothing (Flower sees it through events).
task_track_started = False
task_send_sent_event = True
worker_send_task_events = True
# Connection loss: keep retrying the broker for ever, at start-up too, and let running stages
# finish when the connection drops; their messages may be delivered again, and the run's lease
# makes the copy do nothing. Storing a result or progress retries instead of failing the task.
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None
worker_cancel_long_running_tasks_on_connection_loss = False
result_backend_always_retry = True
result_backend_max_retries = 10

task_default_queue = "training.requests"
task_create_missing_queues = True
task_routes = {"training.submit": {"queue": "training.requests"}}

timezone = "UTC"
enable_utc = True

# Beat fires organizations' schedules from the database (beat_schedules/scheduler.py). It sleeps
# until the next slot but never longer than this, so edits take effect within seconds.
beat_scheduler = "beat_schedules.scheduler:DatabaseScheduler"
beat_max_loop_interval = float(os.environ.get("BEAT_MAX_INTERVAL_S") or 5)
