"""Creating the service's PostgreSQL database when it does not exist yet (`trainctl db upgrade`).

The database is created through the server's `postgres` maintenance database with the same
credentials; where that user may not create databases, the error says how to create it.
"""

from __future__ import annotations

import re

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from training_tasks.errors import NotFoundError

__all__ = ["create_database_if_missing", "is_missing_database"]

MAINTENANCE_DATABASE = "postgres"
CONNECT_TIMEOUT_S = 10
# libpq's own words when the server has no database of the name asked for (psycopg gives no
# SQLSTATE for a refused connection).
_MISSING = re.compile(r'database "(?P<name>[^"]*)" does not exist')
_DUPLICATE_DATABASE = "42P04"  # another process created it first


def is_missing_database(exc: BaseException) -> bool:
    """The server refused the connection because the database it names does not exist."""
    orig = getattr(exc, "orig", None) or exc
    return isinstance(exc, OperationalError) and _MISSING.search(str(orig)) is not None


def create_database_if_missing(url: str) -> bool:
    """Create the PostgreSQL database `url` names if it does not exist; True if it was created.

    Any other URL (SQLite creates its file on first use) is left alone. NotFoundError says how
    to create the database when its user may not.
    """
    target = make_url(url)
    if target.get_backend_name() != "postgresql" or not target.database:
        return False
    try:
        _connect_once(target)
        return False
    except OperationalError as exc:
        if not is_missing_database(exc):
            raise
    try:
        _create(target)
    except DBAPIError as exc:
        raise NotFoundError(_how_to_create(target, exc)) from None
    return True


def _connect_once(url: URL) -> None:
    engine = create_engine(url, poolclass=NullPool, connect_args=_timeout(url))
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _create(target: URL) -> None:
    """CREATE DATABASE through the maintenance database (outside a transaction, as it must be)."""
    admin = create_engine(
        target.set(database=MAINTENANCE_DATABASE),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args=_timeout(target),
    )
    # Always quoted: the database is named exactly as in the URL, capitals and dashes included.
    name = admin.dialect.identifier_preparer.quote_identifier(str(target.database))
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _DUPLICATE_DATABASE:
            raise
    finally:
        admin.dispose()


def _how_to_create(target: URL, exc: DBAPIError) -> str:
    """One line: the database is missing, why it could not be created, and the command to run."""
    name, user = str(target.database), target.username or "(the connecting user)"
    where = f"{target.host or 'localhost'}:{target.port or 5432}"
    reason = _first_line(exc.orig or exc)
    owner = f" OWNER {_quoted(target.username)}" if target.username else ""
    return (
        f"the service database {name} does not exist on {where}, and user {user} could not "
        f"create it ({reason}). Have a PostgreSQL superuser run CREATE DATABASE {_quoted(name)}{owner}; "
        "then run `trainctl db upgrade` again"
    )


def _quoted(identifier: str) -> str:
    """`identifier` as a PostgreSQL quoted identifier, for a command the user copies."""
    return '"' + identifier.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _timeout(url: URL) -> dict[str, int]:
    """A connect timeout unless the URL sets one, so an unreachable server fails in seconds."""
    return {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
