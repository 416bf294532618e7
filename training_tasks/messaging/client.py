"""A Celery-only client for other services: send `training.submit` by name, nothing else needed.

from training_tasks.client import TrainingClient
client = TrainingClient("redis://127.0.0.1:6379/0")
queued = client.submit({"organizationId": "acme-corp", "dataRange": {...}}).get(timeout=30)
# {"runId": ..., "version": ..., "queue": "org.acme-corp"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult

SUBMIT_TASK = "training.submit"
REQUESTS_QUEUE = "training.requests"


class TrainingClient:
    """Submits training requests through the broker, as any Celery client (Python or Node) can."""

    def __init__(self, broker_url: str, *, app: Celery | None = None) -> None:
        self.app = app or Celery("training-client", broker=broker_url, backend=broker_url)
        self.app.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"]
        )

    def submit(self, config: Mapping[str, Any]) -> AsyncResult:
        """Send a camelCase training config; the result is `{runId, version, queue}`."""
        return self.app.send_task(SUBMIT_TASK, args=[dict(config)], queue=REQUESTS_QUEUE)

    def close(self) -> None:
        self.app.close()
