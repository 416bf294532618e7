"""Celery settings, read from the environment. Importing this module has no side effects.

Variables are read with the service's own checked readers (training_tasks.config.settings), so a
bad value stops start-up with a SettingsError naming the variable, as the service's settings do.

The broker is REDIS_URL, or BROKER_URL when it is set: RabbitMQ (amqp://, amqps://) once a
deployment outgrows Redis as its broker, or a Redis of its own. Results, the hot-swap channel,
the beat lock and every other key stay in REDIS_URL either way.

Training tasks run for minutes to hours, so on Redis: acknowledge late (a task lost with its
worker is delivered again), prefetch one message at a time, and keep Redis's visibility timeout
longer than the longest allowed training, or Redis would hand a still-running task to a second
worker. On RabbitMQ a task is acknowledged as it starts instead (task_acks_late below; what to
configure on RabbitMQ's side: docs/operations.md, "RabbitMQ as the broker").
"""

import os

from training_tasks.config.settings import (
    DEFAULT_TRAINING_TIMEOUT_S,
    is_amqp_url,
    read_broker_url,
    read_positive,
    read_redis_url,
)
from training_tasks.messaging.broker_options import transport_for

broker_url = read_broker_url(os.environ)
_on_rabbitmq = is_amqp_url(broker_url)
# Results go to REDIS_URL through Celery's Redis backend, with secrets masked out of what is
# stored (a refusal may echo a URL a client sent): training_tasks/messaging/result_masking.py.
result_backend = (
    f"training_tasks.messaging.result_masking:MaskingRedisBackend+{read_redis_url(os.environ)}"
)

# The longest a training subprocess may run (TRAINING_TIMEOUT_S), plus room for extract and
# validate; a redelivered message is also harmless (the run's lease), but should be rare.
_longest_training_s = read_positive(os.environ, "TRAINING_TIMEOUT_S", DEFAULT_TRAINING_TIMEOUT_S)
_backstop_s = int(_longest_training_s + 3600)
# BROKER_VISIBILITY_TIMEOUT_S overrides it on Redis (tests use seconds to provoke redelivery).
visibility_timeout_s = int(read_positive(os.environ, "BROKER_VISIBILITY_TIMEOUT_S", _backstop_s))
# Redis: the service's Redis transport (it survives undecodable items and a Redis restart) with
# bounded socket timeouts. RabbitMQ: publisher confirms. Why each option, in broker_options.py.
_transport = transport_for(broker_url, visibility_timeout_s)
broker_transport = _transport.transport
broker_transport_options = _transport.options
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

# On Redis, a message is acknowledged when its task has ended, so one lost with its worker is
# delivered again (after visibility_timeout). On RabbitMQ it is acknowledged as a pool child
# starts the task: RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged
# longer than its consumer_timeout (30 minutes by default; per queue only from RabbitMQ 3.12) and
# delivers the message again, and a training may run for hours. A stage lost with its worker is
# recovered by the run's lease instead: it stops being renewed and the reaper sends the stage
# again; a message lost after it was acknowledged but before its stage claimed the run is sent
# again once the run has waited RUN_STALL_S (training_tasks/pipeline/recovery.py). So no stage,
# however long, holds a delivery past consumer_timeout, and RabbitMQ's default can stay.
task_acks_late = not _on_rabbitmq
# One message per free pool child. Quorum queues have no channel-wide (global) prefetch: on
# RabbitMQ the limit holds for each queue a worker consumes, so a worker whose children are all
# busy may still hold up to `concurrency` messages of each of its queues until a child frees, or
# until consumer_timeout hands them to another worker (docs/operations.md).
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
#   copy delivered again meanwhile finds the run's lease taken and does nothing (on RabbitMQ
#   their messages were acknowledged as they started);
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
# RabbitMQ closes a consumer's channel, not its connection, when a delivery stays unacknowledged
# past consumer_timeout: a message a busy worker holds for a free pool child (quorum queues have
# no channel-wide prefetch). Celery takes a channel error for an "Unrecoverable error" and the
# worker exits; with this it reconnects as after a lost connection, and the held messages go
# back to their queues. On Redis a channel error stays fatal, as before.
broker_channel_error_retry = _on_rabbitmq
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
# On RabbitMQ every task queue is a quorum queue (replicated, survives a node's loss): the
# requests queue and each `org.<org>` queue, also one a worker follows at runtime
# (training_tasks/messaging/queues.py). Every sender and consumer must declare a queue with the
# same arguments, or RabbitMQ refuses the second (PRECONDITION_FAILED), so clients set the same
# type (training_client.TrainingClient does). The type is set whatever the broker: the Redis
# transport ignores it, and a process configured for Redis may send to RabbitMQ
# (enqueue_chain with another broker URL). Quorum queues have no priorities (no
# task_queue_max_priority here) and no global prefetch: Celery sees them
# (worker_detect_quorum_queues, on RabbitMQ only) and sets the prefetch per consumer.
task_default_queue_type = "quorum"
task_create_missing_queue_type = "quorum"
worker_detect_quorum_queues = True
# Celery's native delayed delivery needs topic exchanges; these queues have direct ones, so a
# retry's countdown (seconds, RETRY_BACKOFF_S) is held by the worker until it is due. Its helper
# queues, declared anyway when quorum queues are in use, are made cheap classic ones.
broker_native_delayed_delivery_queue_type = "classic"
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
