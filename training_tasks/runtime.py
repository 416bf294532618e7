"""Process-wide handles (settings, database engine, Redis client, model store and the object
store behind it, clock).

Built lazily on first use in each process and rebuilt after a fork, so a prefork worker child
never shares a connection with its parent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Engine

from training_tasks.config.settings import Settings
from training_tasks.db.engine import make_engine, migrate
from training_tasks.protocol.object_store import open_store
from training_tasks.protocol.paths import ModelStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Runtime:
    """The I/O handles that stages receive as arguments."""

    settings: Settings
    engine: Engine
    redis: Any
    store: ModelStore
    now: Callable[[], datetime] = utc_now

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


def build_runtime(settings: Settings | None = None, *, migrate_schema: bool = True) -> Runtime:
    """Connect to the configured database and Redis (migrating the schema if asked)."""
    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url)
    if migrate_schema:
        migrate(engine)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
    objects = open_store(settings.model_store_url)
    return Runtime(settings, engine, client, ModelStore(settings.ml_base_path, objects))


_runtime: Runtime | None = None
_runtime_pid: int | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (and again in a forked child)."""
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        _runtime = build_runtime()
        _runtime_pid = os.getpid()
    return _runtime


def reset_runtime() -> None:
    """Forget the handles inherited from a parent process without closing its connections."""
    global _runtime, _runtime_pid
    if _runtime is not None:
        _runtime.engine.dispose(close=False)
    _runtime, _runtime_pid = None, None
