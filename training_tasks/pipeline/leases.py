"""Keeps the leases of the stages running in this process alive, and passes on cancel requests.

A stage registers its run while it works. One background thread per process (started on first
use, so after a fork) renews every registered lease each third of the lease's lifetime, and once
a second asks the database whether any of those runs was cancelled; it then sets the stage's
cancel event, which stops the training process or the extract within about a second. A stage
still running CANCEL_GRACE_S after that is stuck in something that does not look at the event
(a blocking read, a slow query): the keeper then calls the stage's `on_stuck`, which finishes the
run and frees the worker slot (see stage_runner).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from training_tasks.registry import run_control, runs
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)

CANCEL_POLL_S = 1.0
CANCEL_GRACE_S = 5.0


@dataclass
class _Held:
    rt: Runtime
    cancel: threading.Event | None
    renewed_at: float
    on_stuck: Callable[[], None] | None = None
    cancelled_at: float | None = None


class LeaseKeeper:
    """Renews registered run leases every `ttl_s / 3` seconds until they are released."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], _Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def hold(
        self,
        rt: Runtime,
        run_id: str,
        owner: str,
        cancel: threading.Event | None = None,
        on_stuck: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Keep this owner's lease on the run alive (and watch for a cancel) during the block."""
        with self._lock:
            self._held[(run_id, owner)] = _Held(rt, cancel, time.monotonic(), on_stuck)
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop((run_id, owner), None)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                ttls = [entry.rt.settings.lease_ttl_s for entry in self._held.values()]
            time.sleep(min([CANCEL_POLL_S, *(ttl / 3 for ttl in ttls)]))
            with self._lock:
                held = list(self._held.items())
            if not held:
                continue
            self._pass_on_cancels(held)
            self._stop_stuck(held)
            for (run_id, owner), entry in held:
                if time.monotonic() - entry.renewed_at >= entry.rt.settings.lease_ttl_s / 3:
                    self._renew(entry, run_id, owner)

    def _pass_on_cancels(self, held: list[tuple[tuple[str, str], _Held]]) -> None:
        watched = [(run_id, e) for (run_id, _), e in held if e.cancel and not e.cancel.is_set()]
        if not watched:
            return
        try:
            cancelled = run_control.cancel_requested(
                watched[0][1].rt.engine, [run_id for run_id, _ in watched]
            )
        except Exception:  # the next poll asks again
            log.warning("could not check for cancel requests", exc_info=True)
            return
        for run_id, entry in watched:
            if run_id in cancelled and entry.cancel is not None:
                log.warning("run %s: cancel requested; stopping it", run_id)
                entry.cancelled_at = time.monotonic()
                entry.cancel.set()

    def _stop_stuck(self, held: list[tuple[tuple[str, str], _Held]]) -> None:
        """Call `on_stuck` once for each cancelled stage still held after CANCEL_GRACE_S."""
        now = time.monotonic()
        for key, entry in held:
            if entry.cancelled_at is None or entry.on_stuck is None:
                continue
            if now - entry.cancelled_at < CANCEL_GRACE_S:
                continue
            with self._lock:
                if key not in self._held:
                    continue  # the stage ended meanwhile
            on_stuck, entry.on_stuck = entry.on_stuck, None
            try:
                on_stuck()
            except Exception:
                log.warning("run %s: could not stop its stuck stage", key[0], exc_info=True)

    def _renew(self, entry: _Held, run_id: str, owner: str) -> None:
        with self._lock:
            if (run_id, owner) not in self._held:
                return
        try:
            rt = entry.rt
            runs.renew_lease(
                rt.engine, run_id, owner=owner, now=rt.now(), ttl_s=rt.settings.lease_ttl_s
            )
            entry.renewed_at = time.monotonic()
        except Exception:  # a missed renewal is retried on the next tick; the lease has slack
            log.warning("run %s: lease renewal failed", run_id, exc_info=True)


keeper = LeaseKeeper()
