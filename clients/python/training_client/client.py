"""A Celery-only client: send `training.submit` and `training.status` by name, nothing else needed.

from training_client import TrainingClient
client = TrainingClient("redis://127.0.0.1:6379/0")
# with RabbitMQ as the service's broker: its BROKER_URL, and its REDIS_URL for the results
# client = TrainingClient("amqp://user:password@rabbitmq:5672/training",
#                         result_url="redis://redis:6379/0")
queued = client.submit({"organizationId": "acme-corp", "dataRange": {...}}).get(timeout=30)
# {"runId": ..., "version": ..., "queue": "org.acme-corp"}
final = client.wait(queued["runId"], timeout_s=3600)
# {"runId": ..., "status": "succeeded", "finished": True, "error": None, ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from training_client.errors import RunTimeoutError, ServiceError, from_task_failure

SUBMIT_TASK = "training.submit"
STATUS_TASK = "training.status"
REQUESTS_QUEUE = "training.requests"
# A run in one of these states has ended for good (the status document's `finished`).
FINISHED_STATUSES = frozenset({"succeeded", "validated", "rejected", "failed", "cancelled"})
DEFAULT_STATUS_TIMEOUT_S = 30.0
DEFAULT_WAIT_TIMEOUT_S = 3600.0
DEFAULT_POLL_INTERVAL_S = 2.0

StatusDocument = dict[str, Any]
ProgressCallback = Callable[[StatusDocument], None]


class TrainingClient:
    """Submits training requests and follows runs through the broker, as any Celery client can."""

    def __init__(
        self, broker_url: str, *, result_url: str | None = None, app: Celery | None = None
    ) -> None:
        """Talk to the service through `broker_url` (its BROKER_URL, or its REDIS_URL when the
        service has no BROKER_URL); `result_url` is its REDIS_URL, where results are, needed
        when the broker is RabbitMQ (amqp://, amqps://)."""
        if result_url is None and broker_url.split("://", 1)[0] in ("amqp", "amqps"):
            raise ValueError(
                "TrainingClient: with a RabbitMQ broker, give result_url=, the Redis the "
                "training service keeps its results in (its REDIS_URL)"
            )
        self._owns_app = app is None
        backend = result_url or broker_url
        self.app = app or Celery("training-client", broker=broker_url, backend=backend)
        self.app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            # The service's queues are quorum queues on RabbitMQ, and RabbitMQ refuses a
            # declaration with other arguments; Redis ignores the type.
            task_create_missing_queue_type="quorum",
        )

    def submit(self, config: Mapping[str, Any]) -> AsyncResult:
        """Send a camelCase training config; the result is `{runId, version, queue}`."""
        return self.app.send_task(SUBMIT_TASK, args=[dict(config)], queue=REQUESTS_QUEUE)

    def status(self, run_id: str, *, timeout_s: float = DEFAULT_STATUS_TIMEOUT_S) -> StatusDocument:
        """Where the run stands now, as the service's training log records it.

        Raises RunNotFoundError for a run the service does not know, InvalidRequestError for a
        malformed id, and TimeoutError if no worker answers within `timeout_s`.
        """
        # A request nobody waits for any longer is dropped by the worker, not answered late.
        result = self.app.send_task(
            STATUS_TASK, args=[run_id], queue=REQUESTS_QUEUE, expires=timeout_s
        )
        try:
            answer = result.get(timeout=timeout_s, propagate=False)
        except CeleryTimeoutError:
            raise TimeoutError(
                f"no answer to {STATUS_TASK} for run {run_id} within {timeout_s:g} s; check that "
                f"a worker of the training service consumes the queue {REQUESTS_QUEUE} and has a "
                "free slot, or give a longer timeout_s"
            ) from None
        finally:
            result.forget()  # a poll leaves no result behind in Redis
        if isinstance(answer, BaseException):
            raise from_task_failure(answer)
        if not isinstance(answer, dict) or not isinstance(answer.get("finished"), bool):
            raise ServiceError(
                "UnexpectedAnswer",
                f"{STATUS_TASK} for run {run_id} answered {answer!r:.200}, not a status "
                "document; check that the worker runs a training service that has this task",
            )
        return answer

    def wait(
        self,
        run_id: str,
        *,
        timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        on_progress: ProgressCallback | None = None,
    ) -> StatusDocument:
        """Poll the run's status until it has finished; returns the final status document.

        `on_progress` is called with each status document that differs from the one before,
        the final one included. Once `timeout_s` has passed it raises RunTimeoutError (a
        TimeoutError) naming the run and its last status; the run itself goes on.
        """
        deadline = time.monotonic() + timeout_s
        last: StatusDocument | None = None
        while (remaining_s := deadline - time.monotonic()) > 0:
            try:
                doc = self.status(run_id, timeout_s=remaining_s)
            except TimeoutError:
                break
            if on_progress is not None and doc != last:
                on_progress(doc)
            if doc["finished"]:
                return doc
            last = doc
            time.sleep(max(0.0, min(poll_interval_s, deadline - time.monotonic())))
        raise RunTimeoutError(_still_running(run_id, timeout_s, last), run_id, last)

    def close(self) -> None:
        """Release the broker and result connections of the client's own Celery app."""
        if self._owns_app:
            self.app.close()

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _still_running(run_id: str, timeout_s: float, last: StatusDocument | None) -> str:
    """Why `wait` gave up: the run's last known status, and what to do next."""
    if last is None:
        return (
            f"run {run_id}: no status within {timeout_s:g} s; check that a worker of the "
            f"training service consumes the queue {REQUESTS_QUEUE}, then wait again"
        )
    stage = f" at stage {last.get('stage')}" if last.get("stage") else ""
    return (
        f"run {run_id} of {last.get('organizationId')} is still {last.get('status')}{stage} "
        f"after {timeout_s:g} s; wait again with a longer timeout_s, or cancel it with "
        f"`trainctl cancel {last.get('organizationId')}`"
    )
