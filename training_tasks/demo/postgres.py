"""Demo SCADA data in a real PostgreSQL database (`trainctl demo --scada-url`).

The database is created when it is missing. Each table the demo writes carries a comment that
names the data in it, so that a second load keeps a table that already holds the same data,
rewrites one that holds other demo data, and never touches a table the demo did not write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import psycopg
import sqlalchemy as sa
from psycopg import sql

from training_tasks.demo.events import EVENTS_TABLE, write_failure_events
from training_tasks.demo.scada import ScadaLayout, write_scada_postgres
from training_tasks.redaction import mask_url

DEMO_MARK = "trainctl demo data"
CONNECT_TIMEOUT_S = 10


class DemoLoadError(Exception):
    """The demo data cannot be written where it was asked to go; the message says why."""


@dataclass(frozen=True)
class Loaded:
    """A demo table after loading: its row count, and whether it was already there."""

    rows: int
    kept: bool


def is_postgres_url(url: str) -> bool:
    """Whether `url` is a SQLAlchemy URL of a PostgreSQL database."""
    try:
        return sa.make_url(url).get_backend_name() == "postgresql"
    except sa.exc.ArgumentError:
        return False


def writer_url(url: str) -> str:
    """`url` with the psycopg driver, which the project installs (`postgresql://` means psycopg2)."""
    return sa.make_url(url).set(drivername="postgresql+psycopg").render_as_string(False)


def ensure_database(url: str) -> bool:
    """Create the database that `url` names when it does not exist; True if it was created."""
    target = sa.make_url(url)
    try:
        with psycopg.connect(_conninfo(target), connect_timeout=CONNECT_TIMEOUT_S):
            return False
    except psycopg.OperationalError as exc:
        first_error = exc
    name = target.database or ""
    admin = _conninfo(target.set(database="postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if found:  # it exists: the first error was about something else (rights, pg_hba)
                raise _cannot_connect(url, first_error)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise _cannot_connect(url, first_error, exc) from None
    return True


def load_demo_table(
    url: str, frames: Callable[[], Iterable[pd.DataFrame]], layout: ScadaLayout, tag: str
) -> Loaded:
    """Write `frames()` into `layout.table` unless the table already holds the data `tag` names."""

    def write(replace: bool) -> int:
        return write_scada_postgres(writer_url(url), frames(), layout, replace=replace)

    return _load_marked(url, layout.table, tag, write)


def load_demo_events(url: str, events: Callable[[], pd.DataFrame], tag: str) -> Loaded:
    """Write `events()` into the `failure_events` table unless it already holds what `tag` names."""

    def write(replace: bool) -> int:
        return write_failure_events(writer_url(url), events(), replace=replace)

    return _load_marked(url, EVENTS_TABLE, tag, write)


def _load_marked(url: str, table: str, tag: str, write: Callable[[bool], int]) -> Loaded:
    """Run `write(replace)` for `table` unless it already carries the mark of `tag`."""
    mark = f"{DEMO_MARK}: {tag}"
    engine = sa.create_engine(writer_url(url))
    try:
        inspector = sa.inspect(engine)
        exists = inspector.has_table(table)
        comment = inspector.get_table_comment(table).get("text") if exists else None
        if exists and comment == mark:
            with engine.connect() as conn:
                count = sa.select(sa.func.count()).select_from(sa.table(table))
                return Loaded(rows=int(conn.execute(count).scalar_one()), kept=True)
        if exists and not (comment or "").startswith(DEMO_MARK):
            raise DemoLoadError(
                f"table {table!r} in {mask_url(url)} exists and was not written by the "
                "demo, which leaves it alone: give --scada-url a database of its own "
                "(it is created if missing)"
            )
        try:
            rows = write(exists)
            with engine.begin() as conn:
                conn.execute(sa.text(_comment_sql(conn, table, mark)))
        except BaseException:
            # A half-written table has no mark, and would be refused next time: remove it.
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {_quoted(conn, table)}"))
            raise
        return Loaded(rows=rows, kept=False)
    finally:
        engine.dispose()


def _comment_sql(conn: sa.Connection, table: str, mark: str) -> str:
    literal = sa.literal(mark).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return f"COMMENT ON TABLE {_quoted(conn, table)} IS {literal}"


def _quoted(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _conninfo(url: sa.URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _cannot_connect(url: str, *errors: Exception) -> DemoLoadError:
    reasons = "; ".join(mask_url(str(e).strip().splitlines()[0]) for e in errors if str(e).strip())
    return DemoLoadError(
        f"cannot reach the database of --scada-url {mask_url(url)} ({reasons}); check the URL "
        "and that PostgreSQL answers there"
    )
