"""A worker bootstep that runs the reaper every REAPER_INTERVAL_S seconds (see training_tasks/pipeline/recovery.py)."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import bootsteps

from training_tasks.messaging.tasks import enqueue_chain, queue_waiting
from training_tasks.pipeline.recovery import reap
from training_tasks.runtime import get_runtime

log = logging.getLogger(__name__)


class RunReaper(bootsteps.StartStopStep):
    """Recovers runs whose worker died or whose message was lost: resends the stage or fails them."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, consumer: Any) -> None:
        interval_s = get_runtime().settings.reaper_interval_s
        self.timer_entry = consumer.timer.call_repeatedly(interval_s, self._reap, ())

    def stop(self, consumer: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def _reap(self) -> None:
        rt = get_runtime()
        enqueue = functools.partial(enqueue_chain, broker_url=rt.settings.broker_url)
        waiting = functools.partial(queue_waiting, broker_url=rt.settings.broker_url)

        def enqueue_from(run_id: str, org_id: str, auto_deploy: bool, stage: str) -> str:
            return enqueue(run_id, org_id, auto_deploy, start=stage)

        try:
            reap(rt, enqueue_from, waiting)
        except Exception:  # the database may be away; the next pass tries again
            log.warning("the reaper could not check for dead runs", exc_info=True)
