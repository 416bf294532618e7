"""The Celery Beat scheduler that fires organizations' training schedules from the database.

`celery -A training_tasks beat` uses it (`beat_scheduler` in celeryconfig; or name it with
`-S beat_schedules.scheduler:DatabaseScheduler`). Every tick it renews the leader lock, settles
the slots that are due and sleeps until the next slot, at most `beat_max_loop_interval` seconds,
so that a schedule created, changed or removed while beat runs takes effect within seconds.
A beat without the lock only renews its claim; static `beat_schedule` entries also run only on
the leader.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.beat import Scheduler

from beat_schedules.dispatch import Dispatcher, Policy, TickReport
from beat_schedules.leader import LeaderLock, beat_identity
from training_tasks.fields import iso, iso_or_none
from training_tasks.messaging.tasks import enqueue_chain
from training_tasks.protocol.beat_status import publish_status
from training_tasks.redaction import mask_url
from training_tasks.runtime import Runtime, build_runtime, utc_now

log = logging.getLogger(__name__)

ERROR_LOG_EVERY_S = 60.0


class DatabaseScheduler(Scheduler):
    """Beat scheduler over the `training_schedules` table, with one leader among beats."""

    #: The scheduler's clock. A test may replace it to run beat across a DST change.
    clock: Callable[[], datetime] = staticmethod(utc_now)

    def __init__(self, app: Any, *args: Any, runtime: Runtime | None = None, **kwargs: Any) -> None:
        self._runtime = runtime
        self._dispatcher: Dispatcher | None = None
        self._leader: LeaderLock | None = None
        self._identity = beat_identity()
        self._last_error_log = 0.0
        self._submitted = 0
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        rt = self._runtime or build_runtime()
        self._runtime = rt
        settings = rt.settings
        enqueue = functools.partial(enqueue_chain, broker_url=settings.broker_url)
        policy = Policy(missed=settings.schedule_missed_slots, grace_s=settings.schedule_grace_s)
        self._dispatcher = Dispatcher(rt, enqueue, beat_id=self._identity, policy=policy)
        self._leader = LeaderLock(rt.redis, ttl_s=settings.beat_lock_ttl_s, identity=self._identity)
        log.info(
            "beat %s: schedules from %s, missed slots policy %r, lock TTL %g s, tick at most %g s",
            self._identity,
            mask_url(settings.database_url),
            policy.missed,
            settings.beat_lock_ttl_s,
            self.max_interval,
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: keep or take the lock, fire due slots; returns seconds until the next pass."""
        assert self._leader is not None and self._dispatcher is not None
        ceiling = min(self.max_interval, self._leader.ttl_s / 3)
        was_leader = self._leader.held
        if not self._leader.hold():
            return ceiling
        now = self.clock()
        try:
            if not was_leader:
                self._dispatcher.arm(now)
            report = self._dispatcher.dispatch_due(now)
            next_at = self._dispatcher.next_due_at()
        except Exception as exc:  # a database outage must not end beat: retry next pass
            self._log_error(exc)
            return ceiling
        self._submitted += report.submitted
        self._publish(now, next_at, report)
        interval = ceiling
        if self.schedule:
            interval = min(interval, super().tick(*args, **kwargs) or ceiling)
        if report.more:
            return 0.0
        if next_at is not None:
            interval = min(interval, max((next_at - now).total_seconds(), 0.0))
        return interval

    def close(self) -> None:
        if self._leader is not None:
            self._leader.release()
        super().close()
        if self._runtime is not None:
            self._runtime.close()

    @property
    def info(self) -> str:
        return (
            f"    . db -> {mask_url(self._runtime.settings.database_url) if self._runtime else '?'}"
        )

    def _publish(self, now: datetime, next_at: datetime | None, report: TickReport) -> None:
        assert self._leader is not None and self._runtime is not None
        status = {
            "leader": self._identity,
            "tickAt": iso(now),
            "nextDueAt": iso_or_none(next_at),
            "submittedTotal": self._submitted,
            "lastTick": {"submitted": report.submitted, "skipped": report.skipped},
        }
        try:
            publish_status(self._runtime.redis, status, ttl_s=self._leader.ttl_s)
        except Exception as exc:
            self._log_error(exc)

    def _log_error(self, exc: Exception) -> None:
        if time.monotonic() - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = time.monotonic()
            log.error("beat %s could not dispatch schedules: %s; retrying", self._identity, exc)
