"""Celery settings, read from the environment. Importing this module has no side effects.

Variables are read with the service's own checked readers (training_tasks.config.settings), so a
bad value stops start-up with a SettingsError naming the variable, as the service's settings do.

Training tasks run for minutes to hours, so: acknowledge late (a task lost with its worker is
delivered again), prefetch one message at a time, and keep Redis's visibility timeout longer than
the longest allowed training, or Redis would hand a still-running task to a second worker.
"""

import os

from training_tasks.config.settings import DEFAULT_TRAINING_TIMEOUT_S, read_positive, read_redis_url

broker_url = read_redis_url(os.environ)
# kombu's Redis transport, except that an item on a queue that is not a Celery message is
# dropped with a log line instead of stopping the worker, and that the worker survives Redis
# being restarted under it (training_tasks/messaging/broker_transport.py).
broker_transport = "training_tasks.messaging.broker_transport:Transport"
# Results go to the same Redis through Celery's Redis backend, with secrets masked out of what is
# stored (a refusal may echo a URL a client sent): training_tasks/messaging/result_masking.py.
result_backend = f"training_tasks.messaging.result_masking:MaskingRedisBackend+{broker_url}"

# The longest a training subprocess may run (TRAINING_TIMEOUT_S), plus room for extract and
# validate; a redelivered message is also harmless (the run's lease), but should be rare.
_longest_training_s = read_positive(os.environ, "TRAINING_TIMEOUT_S", DEFAULT_TRAINING_TIMEOUT_S)
_backstop_s = int(_longest_training_s + 3600)
# BROKER_VISIBILITY_TIMEOUT_S overrides it (tests use a few seconds to provoke redelivery).
visibility_timeout_s = int(read_positive(os.environ, "BROKER_VISIBILITY_TIMEOUT_S", _backstop_s))
broker_transport_options = {
    "visibility_timeout": visibility_timeout_s,
    # Each attempt to reach a Redis that is down or unreachable gives up after this, so the
    # worker's reconnect loop keeps going (a host that drops packets would otherwise hold one
    # attempt for the kernel's TCP timeout, minutes).
    "socket_connect_timeout": 5,
    # A command sent to a Redis that vanished without closing the connection (failover, a dead
    # host) fails after this instead of waiting for ever. Kept well above BRPOP's own 1 s wait.
    "socket_timeout": 15,
    # The consumer's BRPOP and pub/sub connections are checked this often (kombu's default,
    # written out): a half-open one is dropped and reconnected within about a minute.
    "health_check_interval": 25,
    # retry_on_timeout stays off: a timed-out publish retried by redis-py could be sent twice,
    # and kombu only batches publishes when it is off.
}
result_backend_transport_options = {"visibility_timeout": visibility_timeout_s}
# The result backend's connection attempts are bounded the same way (Celery's default waits for
# the kernel); its commands already time out after redis_socket_timeout (120 s by default).
redis_socket_connect_timeout = 5

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
# Nothing a client sent rests in Redis: a result holds the task's return value or its (masked)
# error only, never the task's arguments (result_extended stays off; Flower takes arguments from
# the masked task events), and it expires after a day. A submit's result ({runId, version,
# queue}) is read within seconds; the run itself is kept in the database.
result_extended = False
result_expires = 24 * 3600

task_acks_late = True
worker_prefetch_multiplier = 1
# A worker child killed mid-task (the OOM killer, SIGKILL) acks its message: re-queueing it here
# would loop a task that kills its worker. The run's lease stops being renewed instead, and the
# reaper gives the stage another attempt, at most three in all (training_tasks/pipeline/recovery.py).
task_reject_on_worker_lost = False
# A hard backstop for a stage that hangs (training has its own, shorter timeout): the child is
# killed and the run fails.
task_time_limit = _backstop_s
# The run row in the database records every stage as it starts; a STARTED state in the result
# backend would cost a Redis round trip per stage for nothing (Flower sees it through events).
task_track_started = False
task_send_sent_event = True
worker_send_task_events = True
# Connection loss (Redis restarted, failed over, unreachable for a while). The worker's main
# process stays up and reconnects; nothing has to restart it:
# - it retries the broker for ever, at start-up too (a worker started before Redis waits for it);
# - running stages go on: their subprocesses need only the database and files, and cancelling
#   them (Celery's planned default) would throw away hours of training for a Redis blip. Their
#   messages stay in Redis's unacked set and are acknowledged once the connection is back; a
#   copy delivered again meanwhile finds the run's lease taken and does nothing;
# - the broker transport keeps kombu's channel able to restore and acknowledge those messages
#   after the connection dropped (without it the worker exits with "Unrecoverable error:
#   AttributeError(... 'hostname')");
# - a pool child waits up to about five minutes to send a finished stage's next step
#   (workers/worker_hooks.py); every other sender keeps task_publish_retry_policy below;
# - storing a result retries instead of failing the task.
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None
worker_cancel_long_running_tasks_on_connection_loss = False
result_backend_always_retry = True
result_backend_max_retries = 10
# How long a sender whose pooled connection is down keeps reconnecting before that attempt fails
# (then the send's own retry policy decides). A stage sends a progress event for Flower (best
# effort) at each progress line; while Redis is away each one holds the stage this long, so it
# is kept short. The worker's consumer reconnects on its own schedule, without this bound.
broker_connection_timeout = 1
# Celery's default, written out: trainctl, the Python API and beat are told within about a second
# that the broker does not answer (a submitted run is then marked failed, saying what to do).
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 1,
}

task_default_queue = "training.requests"
task_create_missing_queues = True
task_routes = {
    "training.submit": {"queue": "training.requests"},
    "training.status": {"queue": "training.requests"},
}

timezone = "UTC"
enable_utc = True

# Beat fires organizations' schedules from the database (beat_schedules/scheduler.py). It sleeps
# until the next slot but never longer than this, so edits take effect within seconds.
beat_scheduler = "beat_schedules.scheduler:DatabaseScheduler"
beat_max_loop_interval = read_positive(os.environ, "BEAT_MAX_INTERVAL_S", 5.0)
