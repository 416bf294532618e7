"""`trainctl db upgrade` against a PostgreSQL database that does not exist yet, and what the
other commands say about it: the real `trainctl` against the real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url

from tests.conftest import PG_ADMIN_URL
from tests.unit.test_cli_errors import expect_failure, trainctl

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the server's admin database (the server is checked by
    `postgres_url`, which also gives the test a database of its own)."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def missing_database(admin: Engine) -> Iterator[Callable[[str | None], str]]:
    """URLs of databases that do not exist yet (named with capitals and a dash, so only a quoted
    name is right), as a given user; every one is dropped afterwards."""
    names: list[str] = []

    def url(user: str | None = None) -> str:
        names.append(f"Training-{uuid.uuid4().hex[:12]}")
        base = make_url(PG_ADMIN_URL).set(database=names[-1])
        return base.set(username=user or base.username).render_as_string(hide_password=False)

    yield url
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def role_without_createdb(admin: Engine) -> Iterator[str]:
    """A login role that may not create databases (the test server trusts local logins)."""
    role = f"nocreate_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    yield role
    with admin.connect() as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))


def database_exists(admin: Engine, url: str) -> bool:
    name = make_url(url).database
    with admin.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        return found.first() is not None


def test_db_upgrade_creates_a_missing_database_then_migrates_it(
    tmp_path: Path, admin: Engine, missing_database: Callable[[str | None], str]
) -> None:
    url = missing_database(None)
    first = trainctl(tmp_path, "db", "upgrade", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert f"created the database {url}" in first.stdout
    engine = create_engine(url)
    try:
        assert {"organizations", "training_runs", "alembic_version"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
    again = trainctl(tmp_path, "db", "upgrade", DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout and "is up to date" in again.stdout
    assert trainctl(tmp_path, "org", "list", DATABASE_URL=url).returncode == 0


def test_a_user_who_may_not_create_it_is_told_in_one_line_how_to_create_it(
    tmp_path: Path,
    admin: Engine,
    missing_database: Callable[[str | None], str],
    role_without_createdb: str,
) -> None:
    url = missing_database(role_without_createdb)
    name = make_url(url).database
    [line] = expect_failure(trainctl(tmp_path, "db", "upgrade", DATABASE_URL=url), 1)
    assert f"the service database {name} does not exist" in line
    assert "permission denied" in line
    assert f'CREATE DATABASE "{name}" OWNER "{role_without_createdb}"' in line
    assert line.endswith("then run `trainctl db upgrade` again")
    assert not database_exists(admin, url)


def test_other_commands_on_a_missing_database_say_to_run_db_upgrade(
    tmp_path: Path, admin: Engine, missing_database: Callable[[str | None], str]
) -> None:
    url = missing_database(None)
    for command in (["org", "list"], ["history", "acme-corp"]):
        [line] = expect_failure(trainctl(tmp_path, *command, DATABASE_URL=url), 1)
        assert "does not exist; create it with `trainctl db upgrade`" in line
    assert not database_exists(admin, url)


def test_db_upgrade_against_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/training"
    [line] = expect_failure(trainctl(tmp_path, "db", "upgrade", DATABASE_URL=url), 1)
    assert "cannot be reached" in line and "Connection refused" in line
