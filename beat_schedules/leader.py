"""Which beat dispatches: a Redis lock with a time to live (the leader's status key and its
heartbeat are in `training_tasks.protocol.beat_status`).

One beat holds `ml:beat:leader` (its value names the holder) and renews it every tick; any other
beat stands by and takes the lock once it expires, so a dead leader is replaced within the lock's
TTL plus one tick. The lock keeps a second beat from doing the work twice; it is not what makes a
slot fire once (the database's unique key on the slot does that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from redis.exceptions import LockError, LockNotOwnedError, RedisError

log = logging.getLogger(__name__)

LOCK_KEY = "ml:beat:leader"


def beat_identity() -> str:
    """`host:pid:random`, unique per beat process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLock:
    """Take, renew and give back the beat lock; `hold()` says whether this beat may dispatch."""

    def __init__(self, client: Any, *, ttl_s: float, identity: str) -> None:
        self.client = client
        self.identity = identity
        self.ttl_s = ttl_s
        self._lock = client.lock(LOCK_KEY, timeout=ttl_s, blocking=False, thread_local=False)
        self.held = False

    def hold(self) -> bool:
        """Renew the lock if this beat has it, else try to take it; never raises."""
        try:
            if self.held:
                try:
                    self._lock.reacquire()
                    return True
                except LockNotOwnedError:
                    self.held = False
                    log.warning(
                        "beat %s lost the leader lock (now held by %s); stopped dispatching",
                        self.identity,
                        self.holder(),
                    )
            self.held = bool(self._lock.acquire(blocking=False, token=self.identity))
            if self.held:
                log.info("beat %s holds the leader lock; dispatching schedules", self.identity)
            return self.held
        except (RedisError, LockError) as exc:
            # The lock may still be ours in Redis: the next reacquire() finds out.
            log.warning(
                "beat %s cannot reach Redis for its lock (%s); not dispatching", self.identity, exc
            )
            return False

    def holder(self) -> str | None:
        """Who holds the lock now, if anyone."""
        value = self.client.get(LOCK_KEY)
        return value.decode() if isinstance(value, bytes) else value

    def release(self) -> None:
        """Give the lock back at shutdown so a standby takes over at once."""
        if not self.held:
            return
        with contextlib.suppress(RedisError, LockError):
            self._lock.release()
        self.held = False
