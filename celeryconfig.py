"""Celery settings, read from the environment. Importing this module has no side effects.

Training tasks run for minutes to hours, so: acknowledge late (a task lost with its worker is
delivered again), prefetch one message at a time, and keep Redis's visibility timeout longer than
the longest allowed training, or Redis would hand a still-running task to a second worker.
"""

import os

broker_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
result_backend = broker_url

# The longest a training subprocess may run (TRAINING_TIMEOUT_S), plus room for extract and
# validate; a redelivered message is also harmless (the run's lease), but should be rare.
_longest_training_s = float(os.environ.get("TRAINING_TIMEOUT_S") or 7200)
visibility_timeout_s = int(_longest_training_s + 3600)
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
# The run row in the database records every stage as it starts; a STARTED state in the result
# backend would cost a Redis round trip per stage for nothing (Flower sees it through events).
task_track_started = False
task_send_sent_event = True
worker_send_task_events = True
broker_connection_retry_on_startup = True

task_default_queue = "training.requests"
task_create_missing_queues = True
task_routes = {"training.submit": {"queue": "training.requests"}}

timezone = "UTC"
enable_utc = True

# Beat fires organizations' schedules from the database (beat_schedules/scheduler.py). It sleeps
# until the next slot but never longer than this, so edits take effect within seconds.
beat_scheduler = "beat_schedules.scheduler:DatabaseScheduler"
beat_max_loop_interval = float(os.environ.get("BEAT_MAX_INTERVAL_S") or 5)
