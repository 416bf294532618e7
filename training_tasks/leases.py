"""Keeps the leases of the stages running in this process alive, from one background thread.

A stage registers its run while it works; every third of the lease's lifetime the keeper
renews all registered leases. One thread per process (started on first use, so after a fork)
instead of one per stage keeps a stage's fixed cost low.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from training_tasks.registry import runs
from training_tasks.runtime import Runtime

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews registered run leases every `ttl_s / 3` seconds until they are released."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Runtime] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def hold(self, rt: Runtime, run_id: str, owner: str) -> Iterator[None]:
        """Keep this owner's lease on the run alive for the duration of the block."""
        with self._lock:
            self._held[(run_id, owner)] = rt
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
                held = list(self._held.items())
            interval_s = min((rt.settings.lease_ttl_s for _, rt in held), default=60.0) / 3
            self._wake.wait(interval_s)
            for (run_id, owner), rt in held:
                self._renew(rt, run_id, owner)

    def _renew(self, rt: Runtime, run_id: str, owner: str) -> None:
        with self._lock:
            if (run_id, owner) not in self._held:
                return
        try:
            runs.renew_lease(
                rt.engine, run_id, owner=owner, now=rt.now(), ttl_s=rt.settings.lease_ttl_s
            )
        except Exception:  # a missed renewal is retried on the next tick; the lease has slack
            log.warning("run %s: lease renewal failed", run_id, exc_info=True)


keeper = LeaseKeeper()
