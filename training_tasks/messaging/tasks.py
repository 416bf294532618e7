"""The Celery tasks: thin wrappers that look up ids, call a stage and record what happened."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from billiard.process import current_process
from celery import Task, chain
from celery.exceptions import Ignore, WorkerLostError
from kombu.exceptions import ChannelError

from training_tasks.db.errors import DatabaseError
from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.messaging.app import app
from training_tasks.messaging.broker import BrokerUnavailable
from training_tasks.messaging.broker_options import transport_for
from training_tasks.pipeline import stage_bodies
from training_tasks.pipeline.alerts import alert_run_end
from training_tasks.pipeline.run_status import read_run_status
from training_tasks.pipeline.stage_runner import (
    RetryStage,
    StageCall,
    StageContext,
    StageOutcome,
    StageSkipped,
    run_stage,
)
from training_tasks.pipeline.submit import (
    check_wire_request,
    submit_training,
)
from training_tasks.protocol.ids import org_queue
from training_tasks.registry import runs
from training_tasks.registry.rows import ACTIVE_STATUSES
from training_tasks.runtime import get_runtime

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 64 * 1024  # a request names columns and hyperparameters, never data


@app.task(name="training.submit", bind=True)
def submit(self: Task, config: dict[str, Any], trigger: str = "celery") -> dict[str, Any]:
    """Public entry: check a camelCase training config, record the run, enqueue its chain."""
    request = check_wire_request(config)  # shape and nesting first: json.dumps recurses
    size = len(json.dumps(request, default=str))
    if size > MAX_REQUEST_BYTES:
        raise ConfigError(
            "config",
            f"is {size:,} bytes of JSON; a training request is at most {MAX_REQUEST_BYTES:,} bytes",
        )
    return submit_training(
        get_runtime(),
        request,
        trigger=trigger,
        actor=f"celery:{self.request.id}",
        enqueue=enqueue_chain,
    )


@app.task(name="training.status")
def run_status(run_id: str) -> dict[str, Any]:
    """Public: where a run stands, read from the training log (the contract in docs/clients.md).

    An unknown run id fails the task with NotFoundError, a malformed one with ConfigError; either
    message names the id and says what to do.
    """
    return dict(read_run_status(get_runtime().engine, run_id))


@app.task(name="training.extract", bind=True, ignore_result=True)
def extract(self: Task, run_id: str) -> str:
    """Stage 1: SCADA rows of the requested range into Parquet files."""
    return _run(self, run_id, "extract", stage_bodies.extract_body)


@app.task(name="training.train", bind=True, ignore_result=True)
def train(self: Task, run_id: str) -> str:
    """Stage 2: the training script in its sandbox; the model filed under its version."""
    return _run(self, run_id, "train", stage_bodies.train_body)


@app.task(name="training.validate", bind=True, ignore_result=True)
def validate(self: Task, run_id: str) -> str:
    """Stage 3: the service's own checks of the exported model."""
    return _run(self, run_id, "validate", stage_bodies.validate_body)


@app.task(name="training.deploy", bind=True, ignore_result=True)
def deploy(self: Task, run_id: str) -> str:
    """Stage 4: deploy atomically and publish the hot-swap message."""
    return _run(self, run_id, "deploy", stage_bodies.deploy_body)


def _run(task: Task, run_id: str, stage: str, body: Callable[[StageContext], StageOutcome]) -> str:
    """Run a stage for this task's message; Celery's Ignore and retry for the runner's decisions."""
    try:
        return run_stage(_stage_call(task), run_id, stage, body)
    except StageSkipped as skipped:
        raise Ignore() from skipped
    except RetryStage as again:
        raise task.retry(
            exc=again.error, countdown=again.countdown_s, max_retries=again.max_attempts
        ) from None


def _stage_call(task: Task) -> StageCall:
    def show_progress(progress: dict[str, Any]) -> None:
        # Flower builds its task views from events only, and shows a task-progress event's
        # result as the task's PROGRESS (a state in the result backend would never show there).
        task.send_event("task-progress", retry=False, result=json.dumps(progress, sort_keys=True))

    return StageCall(
        worker=str(task.request.hostname),
        message_id=task.request.id,
        show_progress=show_progress,
        in_pool_process=current_process().name.startswith("ForkPoolWorker"),
    )


@app.task(name="training.on_failure")
def on_failure(request: Any, exc: BaseException, traceback: Any) -> None:
    """Error handler of every chain: make sure the run is marked failed, and say so.

    A task whose worker process died (WorkerLostError: the OOM killer, a SIGKILL) is left to the
    reaper, which gives the stage another attempt once the run's lease has expired.
    """
    run_id = request.args[0] if request.args else None
    if not isinstance(run_id, str):
        return
    rt = get_runtime()
    if isinstance(exc, WorkerLostError):
        with contextlib.suppress(DatabaseError, NotFoundError):
            if runs.get_run(rt.engine, run_id)["status"] not in ACTIVE_STATUSES:
                return  # it ended first (a cancelled stage that would not stop ends its process)
        log.warning(
            "run %s: the worker process running %s died (%s); the reaper retries the stage "
            "once its lease expires",
            run_id,
            request.task,
            exc,
        )
        return
    if _hand_over_lost(rt, run_id, exc):
        log.warning(
            "run %s: its stage is done but the broker did not take the next stage's message "
            "(%s); the reaper sends it again once the broker answers (RUN_STALL_S)",
            run_id,
            exc,
        )
        return
    try:
        finished = runs.finish_failed(
            rt.engine,
            run_id,
            status="failed",
            stage=None,
            error=f"{type(exc).__name__}: {exc}",
            trace=None,
            actor="error-handler",
            now=rt.now(),
        )
    except DatabaseError as db_exc:
        log.warning(
            "run %s: could not record its failure (%s); the reaper retries the stage once the "
            "run's lease expires",
            run_id,
            str(db_exc).splitlines()[0],
        )
        return
    try:
        run = runs.get_run(rt.engine, run_id)
    except NotFoundError:
        log.warning("a task failed for run %s, which this database does not know", run_id)
        return
    log.error(
        "training run %s of %s ended %s at %s: %s%s",
        run_id,
        run["organization_id"],
        run["status"],
        run["stage"],
        run["error"],
        "" if not finished else " (marked by the error handler)",
    )
    if finished:
        alert_run_end(rt, run_id)


def _hand_over_lost(rt: Any, run_id: str, exc: BaseException) -> bool:
    """A broker error after the stage was recorded: only the next message is missing."""
    if not isinstance(exc, BrokerUnavailable):
        return False
    try:
        run = runs.get_run(rt.engine, run_id)
    except (DatabaseError, NotFoundError):
        return False
    return run["status"] in ACTIVE_STATUSES and run["lease_owner"] is None


_pools: dict[str, Any] = {}


def _connection_pool(broker_url: str) -> Any:
    """A small pool of broker connections per URL, so enqueueing does not connect every time."""
    if broker_url not in _pools:
        _pools[broker_url] = _connection(broker_url).Pool(limit=4)
    return _pools[broker_url]


def _connection(broker_url: str | None) -> Any:
    """A connection to `broker_url` (the app's broker if None) with the transport its kind needs.

    The app's transport fits the broker of this process's environment; a caller may name the
    other kind (Redis or RabbitMQ), whose transport and options come from broker_options.
    """
    if broker_url is None or broker_url == app.conf.broker_url:
        return app.connection_for_write()
    chosen = transport_for(broker_url)
    return app.connection_for_write(
        broker_url, transport=chosen.transport, transport_options=chosen.options
    )


def enqueue_chain(
    run_id: str,
    org_id: str,
    auto_deploy: bool,
    *,
    broker_url: str | None = None,
    start: str = "extract",
) -> str:
    """Send extract | train | validate [| deploy] for a run to the organization's queue.

    `start` resumes a run at a later stage (the reaper's recovery). `broker_url` overrides the
    app's broker, for callers whose settings were not built from this process's environment
    (an embedding application, tests).
    """
    queue = org_queue(org_id)
    stages = [extract, train, validate, *([deploy] if auto_deploy else [])]
    first = [t.name for t in stages].index(f"training.{start}")
    steps = [stages[first].si(run_id), *(t.s() for t in stages[first + 1 :])]
    # Routing and the worker's task registry go by the task's name; the display name (Celery's
    # `shadow`) only changes what Flower, events and worker logs show.
    workflow = chain(
        *(
            step.set(queue=queue, ignore_result=True, shadow=display_name(step.task, org_id))
            for step in steps
        )
    )
    workflow.link_error(on_failure.s().set(queue=queue))
    if broker_url is None or broker_url == app.conf.broker_url:
        result = workflow.apply_async()
    else:
        with _connection_pool(broker_url).acquire(block=True, timeout=10) as connection:
            # The task-sent event goes to that broker's event exchange, whose type depends on
            # the broker (fanout on Redis, topic on RabbitMQ): the app's own dispatcher would
            # declare it for the app's broker, and RabbitMQ would then refuse the workers'.
            events = app.events.Dispatcher(connection, enabled=False)
            result = workflow.apply_async(connection=connection, event_dispatcher=events)
    while result.parent is not None:
        result = result.parent
    return str(result.id)


def display_name(task_name: str, org_id: str) -> str:
    """How a stage of `org_id` is shown in Flower and worker logs: `training.train[acme-corp]`."""
    return f"{task_name}[{org_id}]"


def queue_waiting(org_id: str, *, broker_url: str | None = None) -> bool:
    """Whether a message waits in the organization's queue (not counting ones a worker took)."""
    with _connection(broker_url) as connection:
        try:
            declared = connection.default_channel.queue_declare(
                queue=org_queue(org_id), passive=True
            )
        except (ChannelError, *connection.channel_errors):
            return False  # the queue does not exist, so nothing waits in it
        return int(declared.message_count) > 0
